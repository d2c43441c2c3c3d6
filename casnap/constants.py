"""Tunable constants in one place, each with the reason for its value.

Values that affect how data is stored (chunker parameters) are copied into the repository config at
init, so changing a default here never changes how an existing repository deduplicates.
"""

from __future__ import annotations

# On-disk format version written to `config`; a repository of another version is refused.
# 2: packs hold frames of several chunks, columnar index files, chunk lists as deltas (FORMAT.md).
FORMAT_VERSION = 2

# FastCDC parameters. pyfastcdc's real mean chunk is about avg + min (~10 KiB here). Measured on
# FAISS IVF files, CDC dedup is 96% at 4 KiB, 94% at 8 KiB, 90% at 16 KiB and 68% at 64 KiB, while
# restic/borg-sized chunks (1-2 MiB) dedup 0% on our files: small chunks are the point.
CDC_MIN = 2 * 1024
CDC_AVG = 8 * 1024
CDC_MAX = 64 * 1024

# FAISS files are cut at their arrays' boundaries, in fixed blocks measured from each array's start
# (chunking/faiss.py). Measured over 10 evolving steps of the sample app (docs/TUNING.md):
# Flat vectors are append-only, so any block size re-stores only the tail block; 64 KiB keeps
# chunk counts low. IVF inverted lists grow at their ends: 2 KiB blocks stored 7.5 MiB against
# 9.7 (4 KiB) and 13.9 (8 KiB). HNSW neighbour arrays change in place everywhere: 1 KiB blocks
# stored 5.6 MiB against 7.5 (2 KiB) and 9.4 (16 KiB), for a few thousand chunks.
FAISS_VECTOR_BLOCK = 64 * 1024
FAISS_LIST_BLOCK = 2 * 1024
FAISS_GRAPH_BLOCK = 1024
FAISS_IDS_BLOCK = 64 * 1024

# The chunkers a config's "faiss" entry may name.
FAISS_CHUNKERS = ("faiss", "faiss-cdc")

# The `faiss-cdc` chunker (new repositories; repositories made before it keep `faiss` and the
# blocks above): [min, avg, max] bytes per kind of array, rounded to whole elements; equal values
# give fixed element blocks. Measured on evolving indexes (benchmarks/faiss_chunking.py,
# docs/TUNING.md). Vectors are cut by content, since remove_ids moves every later vector down:
# a LangChain-like store (30k vectors of d=384, 5 rounds of +3%, 1% updated, 0.5% deleted) added
# 28.1 MiB with 8 KiB pieces against FastCDC's 36.7 and fixed blocks' 197.7; 4 KiB pieces 20.7,
# for twice the chunks of every index and dearer appends; 16 KiB 47.6. A minimum of half the
# average re-synchronised best.
# Inverted lists keep fixed blocks: FAISS appends to them and removes by moving a list's last
# entry into the hole, so their positions never shift. Id arrays (id maps, direct maps, a list's
# ids) are cut by content like vectors. HNSW graph arrays change in place: fixed blocks.
FAISS_CDC_VECTORS = (4 * 1024, 8 * 1024, 32 * 1024)
FAISS_CDC_LISTS = (2 * 1024, 2 * 1024, 2 * 1024)
FAISS_CDC_IDS = (512, 1024, 4 * 1024)
FAISS_CDC_GRAPH = (1024, 1024, 1024)

# New chunks that follow each other in a file are compressed together in one frame of up to this
# many plain bytes (up to 128 SQLite pages). Over 10 steps of the sample app, frames of 512 KiB
# stored 52.1 MiB of increments against 53.3 (256 KiB) and 51.9 (1 MiB); the first snapshot
# 4% less than 256 KiB frames and 8% less than one frame per chunk. Restoring one chunk decodes
# its whole frame, so frames stay well below a pack.
FRAME_TARGET = 512 * 1024

# Decoded frames kept while restoring or reading chunk by chunk, so a frame whose chunks are
# used out of order (pages moved by VACUUM) is decoded once.
FRAME_CACHE_BYTES = 64 * 1024 * 1024

# An index file stored larger than this is read and decoded piece by piece on a local backend
# (indexstream.py), so loading it costs the memory of its arrays only, not also its stored and
# decoded bytes (~320 MB and ~570 MB for 10M entries). Smaller ones, most commits' (~32 bytes per
# new chunk: 16 MiB is ~500k chunks), are read whole: one read, and a remote backend's cache
# keeps them.
INDEX_STREAM_BYTES = 16 * 1024 * 1024

# Compress float32 vector data with its bytes grouped by position (sign/exponent bytes apart):
# 6% smaller than plain zstd on the sample's embeddings (docs/TUNING.md).
GROUP_FLOATS = True

# A file's chunk list is stored as a delta against its previous version (chunklist.py) unless the
# chain of deltas grows past this many or past the size of a full list; restoring applies them in
# turn, so the bound keeps that cheap.
LIST_MAX_DELTAS = 16

# Pack files collect many compressed frames so the file count stays low with small chunks. A pack
# is built in memory and one more may wait to be written, so this bounds a commit's memory by
# about twice its size; 16 MiB (restic's choice too) keeps a 1 GiB repository to ~60 files and
# the peak RSS of a commit of a 2 GB database well under 300 MB.
PACK_TARGET_SIZE = 16 * 1024 * 1024

# -- Limits on sizes read from a repository ------------------------------------------------------
# A repository is input like any other: the sizes in its config, index files and pack directories
# decide what casnap allocates, so one past these limits is an integrity error, refused before
# anything is allocated for it (docs/FORMAT.md, "Limits"). Each limit admits with a wide margin
# everything casnap writes itself, and keeps the memory of any one object a small share of the
# ~300 MB a commit, checkout or verify may use.

# Smallest size a chunker parameter (FastCDC min/avg/max, fixed size, FAISS blocks) may have:
# SQLite's smallest page. Below it the per-chunk costs (36-byte ref, 53-byte directory record,
# ~65 bytes of index in memory) outweigh the data, and a 1-byte chunker makes a commit hold
# dozens of bytes of bookkeeping per byte read.
MIN_CHUNKER_SIZE = 512

# Plain size of one chunk (a data chunk, or a chunk-list blob): 256x the largest chunk the default
# chunkers emit (64 KiB: CDC_MAX, FAISS_VECTOR_BLOCK, SQLite's largest page), and FastCDC's own
# largest maximum. Also the largest chunker parameter a config may set, and the largest chunk
# list delta a commit writes (a longer one is stored as a full list, in pieces of 576 KiB).
MAX_CHUNK_SIZE = 16 * 1024 * 1024

# Plain size of one frame: 32x FRAME_TARGET. A frame holds chunks up to frame_target bytes, or
# one chunk larger than that, so a config's frame_target may not exceed it either. A restore or
# verify decodes one frame per worker at a time, and caches frames up to this size.
MAX_FRAME_SIZE = 16 * 1024 * 1024

# An encoded frame is its codec byte and at most its plain bytes (a frame that does not compress
# by MIN_COMPRESSION_GAIN is stored raw), so its stored length is at most MAX_FRAME_SIZE + 1.
MAX_FRAME_LENGTH = MAX_FRAME_SIZE + 1

# pack_target a config may set: 4x PACK_TARGET_SIZE. A commit holds about two packs in memory
# (the open one and one being written), so this keeps its packs under ~130 MB.
MAX_PACK_TARGET = 64 * 1024 * 1024

# A pack's directory is written once its uncompressed records reach this many bytes, whatever
# pack_target says (only packs of ~300k chunks reach it: a 16 MiB pack of 4 KiB pages holds 4k).
MAX_PACK_DIRECTORY = 16 * 1024 * 1024

# Size of one pack file. A pack is closed once its frames reach pack_target (at most
# MAX_PACK_TARGET) or its directory MAX_PACK_DIRECTORY, so it holds at most MAX_PACK_TARGET plus
# one frame plus a directory of about MAX_PACK_DIRECTORY: under 100 MiB. `verify --read-data`
# and repair-index read a pack whole, so a larger one is refused unread.
MAX_PACK_SIZE = 128 * 1024 * 1024

# zstd level 3 (zstd's default) compresses SQLite pages 2.7x against 2.5x at level 1, at about half
# the speed (~180 vs ~340 MB/s); stored per repository, so it can be tuned without breaking dedup.
ZSTD_LEVEL = 3

# float32 vectors barely compress (1.08x); byte-grouped they reach 1.19-1.25x, at level 1 as well
# as at level 3 (slightly better, even) and faster to compress and decompress (docs/TUNING.md).
FLOAT_ZSTD_LEVEL = 1

# Store a chunk raw unless compression saves at least this fraction (float vectors barely compress,
# and raw chunks restore faster).
MIN_COMPRESSION_GAIN = 0.03

# Bytes read per step when streaming a file through a chunker, and the unit of work of a commit's
# worker threads (hash, frame, compress): a few blocks in flight keep every core busy and bound
# memory whatever the file size (8 MiB blocks cost more memory and were no faster on 2 cores).
READ_BLOCK = 4 * 1024 * 1024

# Files up to this size are read (commit) and written (checkout) many at a time, in batches, not
# one by one through the streaming pipeline: for small files the fixed cost per file (a plan, a
# task per worker, a chunk list read on its own) outweighed the bytes. Above it a file is large
# enough to fill the pipeline by itself.
SMALL_FILE = 1024 * 1024

# A file whose size or mtime changes while it is read is read again this many times, then the
# commit fails naming it.
SOURCE_RETRIES = 3

# A plain file changed less than this long before casnap reads it is waited for first: file
# timestamps tick with the kernel's coarse clock (1-10 ms), so a file rewritten in place within
# one tick keeps its size, mtime and ctime, and only an older last change makes a rewrite during
# the read visible in the stat taken after it.
STAT_SETTLE_NS = 20_000_000

# Files changed within this window before a commit started are re-read next time even if their
# stat is unchanged: a write in the same timestamp tick would otherwise go unnoticed ("racy"
# files). 2 s covers filesystems with whole-second timestamps (FAT has 2 s); on a filesystem
# whose timestamps carry nanoseconds the tick is the kernel's coarse clock (1-10 ms), and 100 ms
# is ten ticks of the slowest one, so a commit right after the data was written still caches it.
RACY_WINDOW_NS = 2_000_000_000
RACY_WINDOW_FINE_NS = 100_000_000

# Seconds to wait for a busy SQLite source database before failing.
SQLITE_BUSY_TIMEOUT = 30.0

# Seconds a password command may take to print the password and end (CASNAP_PASSWORD_TIMEOUT
# overrides it; 0: no limit). Long enough for a person to answer a pinentry or touch a hardware
# key; short enough that a command with nobody to answer it (a vault that does not reply, a
# prompt a cron job cannot see) fails the backup with a line instead of hanging it for ever.
PASSWORD_COMMAND_TIMEOUT = 120.0

# Seconds to wait for a conflicting repository lock before failing with the holder's name
# (CASNAP_LOCK_WAIT overrides it: 0 fails at once, for scripts that must not queue).
LOCK_WAIT_SECONDS = 60.0

# A first commit (or copy) that finds its repository folder being made by another process (a
# temp file of the config, or an encrypted init's key file, and no config yet) waits this long
# for the config, checking every INIT_POLL_SECONDS. An init writes its config within
# milliseconds of either (the key is derived before its file is written), so only a folder an
# init left when it was killed waits all of it, and then fails as before.
INIT_WAIT_SECONDS = 10.0
INIT_POLL_SECONDS = 0.02
# the same on S3, where each check is a few requests (an S3 object's time is in whole seconds:
# a key file there is known to be old one second later than in a folder)
INIT_POLL_REMOTE_SECONDS = 0.5

# A lock holder writes its lock afresh this often (a new object with a new time, then the old one
# deleted: objects are immutable), and a lock whose last refresh is older than LOCK_STALE is
# stale whatever host wrote it: a pid on another host cannot be checked, and a host that crashed
# or lost its network must not block every gc forever. Restic uses the same 5 and 30 minutes:
# six missed refreshes before a live holder loses its lock ride out a slow storage endpoint,
# while a dead host's lock blocks a gc for at most half an hour. Hosts' clocks must agree to well
# within LOCK_STALE - LOCK_REFRESH (docs/FORMAT.md, "Locks").
LOCK_REFRESH_SECONDS = 5 * 60.0
LOCK_STALE_SECONDS = 30 * 60.0
# A holder that deletes (gc, prune, forget, a commit's rollback) writes its lock afresh before its
# first delete, and before any later one once the lock was last written this long ago (else it
# looks the lock up: one request): a lock found removed then (its holder stalled past
# LOCK_STALE, or another host's clock runs ahead, and another process found it stale) stops it
# before it deletes what a commit made meanwhile may need. A minute keeps every delete well
# inside LOCK_STALE of a write found still there.
LOCK_CONFIRM_SECONDS = 60.0
# Between those writes, in a loop that only deletes (gc's packs, forget's manifests), a look-up
# that found the lock there this recently does for the next delete: a gc deleting hundreds of
# objects on a remote store pays a request a second, not one per delete, and a lock removed
# meanwhile (`unlock --force`) still stops it within a second.
LOCK_LOOKUP_SECONDS = 1.0

# Storage requests that fail transiently (TransientError: timeouts, resets, 5xx, throttling) are
# tried this many times in all (backends/retrying.py), waiting a random time between 0 and
# RETRY_BASE_DELAY * 2**n (at most RETRY_MAX_DELAY) before retry n+1 ("full jitter": many
# hosts retrying at once spread out instead of hammering a throttled endpoint together). 8
# attempts wait at most 0.5+1+2+4+8+16+30 = 61.5 s, about 31 s on average: a commit that has
# uploaded for an hour rides out a minute-long outage or a burst of S3 "SlowDown" answers,
# while a storage that stays down surfaces as one clear error within about a minute (plus
# each attempt's own timeout).
RETRY_ATTEMPTS = 8
RETRY_BASE_DELAY = 0.5
RETRY_MAX_DELAY = 30.0
# ...but a request the store left unanswered for a whole read timeout (it accepts connections
# and sends nothing: a hung server) this many times is given up on: 2 minutes at S3's 60 s
# timeout, not 8.5 (a store that answers slowly, or fails otherwise, keeps every attempt).
RETRY_SILENT_ATTEMPTS = 2

# casnap's own temporary files, passed over in every data dir (any other name is the user's:
# even what looks like OS litter, such as Thumbs.db, may be a database)
TEMP_PREFIX = ".casnap-tmp-"

# Smoke checks of restored databases (casnap/smoke_sqlite.py). A database up to this size gets
# PRAGMA integrity_check, which also cross-checks every index entry against its table row and is
# several times slower than quick_check; above it, quick_check (every page, b-tree and freelist is
# still read) keeps a checkout of a large database to about one sequential read of it.
SMOKE_QUICK_CHECK_ABOVE = 256 * 1024 * 1024

# A staged database is checked through a memory map of at most this many bytes (the rest with
# read calls): mapped pages count as the checkout's resident memory, which must not grow with
# the database's size.
SMOKE_MMAP_MAX = 64 * 1024 * 1024

# Row counts (SELECT count(*) per table, a read of each table's smallest b-tree) are listed for
# databases up to this size; above it tables are listed without counts.
SMOKE_ROWCOUNT_MAX = 1024 * 1024 * 1024

# FAISS indexes are read and searched in a child process, so a damaged file that crashes the FAISS
# reader or asks it for absurd allocations fails a check instead of the casnap process. The child
# may use this much address space plus four times the largest index it reads, and this long.
FAISS_PROBE_MEMORY = 4 * 1024 * 1024 * 1024
FAISS_PROBE_TIMEOUT = 600.0

# Bytes read from the start of a file to tell what it is (casnap/formats/): every question about
# a file's type is answered from one read of this many bytes. 100 is SQLite's database header (its
# magic, page size and WAL mode bytes), the longest header any question needs; a FAISS index
# header (fourcc, dimension, vector count, two marker fields) is 32 bytes.
SNIFF_BYTES = 100

# The tag of the snapshot a checkout takes of target data no snapshot holds before replacing it.
SAFETY_TAG = "pre-checkout"

# Threads reading chunk lists ahead from a repository that is not a local directory (S3): they
# wait for small ranged reads of many packs at once.
REMOTE_WORKERS = 8
# Threads fetching the spans of a restore from such a repository (spans.py): at most SPANS_AHEAD
# (48 MiB) of spans are fetched ahead, two or three of the largest, so a few threads keep it busy;
# each thread more keeps a malloc arena of freed span buffers (~+20 MiB of RSS each, measured).
SPAN_FETCHERS = 4

# Repack a pack when more than this share of its bytes is unreferenced (restic's default
# --max-unused is 5%): rewriting a pack costs reading and writing all of it, so a little waste in
# a pack is cheaper to keep than to move.
DEFAULT_MAX_UNUSED = 5.0

# The encryption a repository may be created with: none, or repokey (docs/FORMAT.md).
ENCRYPTIONS = ("none", "repokey")
