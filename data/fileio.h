// Small file helpers shared by every reader and writer: whole-file reads with clear errors, and atomic
// writes (temporary file in the same directory, fsync, rename), so a crash mid-write never leaves a
// half-written file under the final name.
#pragma once

#include <cstdint>
#include <sys/types.h>

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace tune {

std::vector<uint8_t> read_file_bytes(const std::string& path);  // throws tune::Error naming the file
// A file's header without the gigabytes behind it: its first `probe` bytes, then (through the same open file,
// so a file renamed over it meanwhile cannot mix two) up to length(those bytes) bytes in all; fewer when the
// file is shorter. *total: the whole file's size. Errors as read_file_bytes.
std::vector<uint8_t> read_file_head(const std::string& path, size_t probe,
                                    const std::function<size_t(const std::vector<uint8_t>&)>& length, size_t* total);
void make_dirs(const std::string& dir);                          // mkdir -p; throws tune::Error
std::string directory_of(const std::string& path);               // "a/b/c" -> "a/b", "c" -> ".", "/c" -> "/"
void write_file_atomic(const std::string& path, const void* data, size_t bytes);

// A file read line by line in bounded memory, whatever its size (pipes too), with read_file_bytes' errors.
class LineReader {
   public:
    explicit LineReader(const std::string& path);
    ~LineReader();
    LineReader(const LineReader&) = delete;
    LineReader& operator=(const LineReader&) = delete;
    // The next line without its '\n' (a last line without one counts); false at the end of the file.
    bool next(std::string& line);
    size_t bytes_read() const { return consumed_; }

   private:
    std::string path_;
    int fd_ = -1;
    std::vector<char> buf_;
    size_t begin_ = 0, end_ = 0, consumed_ = 0;
    bool eof_ = false;
};

// A whole file's bytes, read-only. A regular file is memory-mapped: its pages live in the kernel's page cache,
// are read when first touched, and are shared by every process that maps the same file (the ranks of a
// data-parallel job on one node hold one copy). Anything else (a pipe) is read into memory. Errors as
// read_file_bytes.
// A mapped file cut short while mapped (truncated in place: `> file`, or `cp other.bin` over it while the copy
// is shorter) makes the next read of a page past its new end a SIGBUS; the process then ends with exit
// status 1 and "error: FILE was cut short (...) while it was being read" instead of "Bus error" (a page its
// file system could not read: "could not be read"). A file rewritten in place at its old length or longer is
// not noticed: replace files by renaming new ones over them.
class MappedFile {
   public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    const uint8_t* data() const { return map_ ? static_cast<const uint8_t*>(map_) : copy_.data(); }
    size_t size() const { return map_ ? size_ : copy_.size(); }

   private:
    void* map_ = nullptr;
    size_t size_ = 0;
    std::vector<uint8_t> copy_;
};

// Whether two paths name the same file (as given, or through links and relative paths); false when either is
// missing.
bool same_file(const std::string& a, const std::string& b);
// The size of a regular file, or 0 for anything else (a pipe, a missing file: its reader reports that).
size_t file_size_or_zero(const std::string& path);
// Throws what a reader would (missing, unreadable, a directory) without opening the file, so a pipe is not
// consumed: for checking every input before hours of work on the first ones.
void check_readable(const std::string& path);
// For a file read more than once (weights: its format, then its config, then its tensors): a pipe (a shell's
// <(...)), a terminal or another stream would be consumed by the first read and seem to hold garbage after it,
// so it is refused by name. A regular file, a directory or a missing path passes (their readers say the rest).
void require_rereadable(const std::string& path, const char* what);
// Creates and opens a file named `prefix` + ".HOST.PID.N" that no other writer (thread or process, on any host
// sharing the directory) is using: O_EXCL, with N counting up past names that exist. Sets *name; returns the
// descriptor, or -1 with errno set (after 100 names that all exist: EEXIST).
int open_unique(const std::string& prefix, int flags, mode_t mode, std::string* name);
// This machine's name as open_unique writes it (letters, digits and '-'), so a leftover's process id can be
// checked on the host that made it and no other.
std::string host_name();
// Removes the temporaries AtomicFile left in `dir` (NAME.tmp.HOST.PID.N) on this host by a process that is
// gone (a killed run's: no such pid here, and no flock on the file), and returns their paths. Another host's
// are left alone: its process ids mean nothing here. A missing directory has none. With `name`, only the
// temporaries of DIR/NAME.
std::vector<std::string> remove_dead_temporaries(const std::string& dir, const std::string& name = "");
// What the tools say about each: "PATH: left by a run that was killed (...): removed".
std::string dead_temporary_note(const std::string& path);
// A scratch file in `dir` (the same file system as what is written there) with no name: gone when closed, or
// when the process dies. Read and write; errors name `for_path`.
std::FILE* anonymous_scratch_file(const std::string& dir, const std::string& for_path);

// One writer at a time in a directory: an exclusive flock(2) on DIR/.lock, which holds "TOOL, pid P on host H"
// for the message another one gets. Taken (DIR made first if missing), the constructor returns; held by another
// process, it throws tune::Error naming the directory and the holder. The destructor removes the file and
// releases the lock (and DIR, if it made DIR and DIR is empty); a process that dies releases it too (the kernel
// does), so a crash leaves at most a file the next writer takes over. On a file system without locks (some
// network ones), no lock, and a note on stderr says so.
class DirLock {
   public:
    DirLock(const std::string& dir, const std::string& tool);
    ~DirLock();
    DirLock(const DirLock&) = delete;
    DirLock& operator=(const DirLock&) = delete;

   private:
    std::string dir_, path_;
    int fd_ = -1;
    bool made_ = false;  // the constructor made dir: removed again if still empty at the end
};

// Why `path` (through its links) is no file a new one may replace: "a character device, not a file (...)",
// also a block device, FIFO or socket (/dev/null, a named pipe); "" for a regular file, a directory (its own
// errors) or nothing there.
std::string not_a_file_to_replace(const std::string& path);

// A file written piece by piece, atomically: the pieces go into a temporary file beside `path`, and commit()
// fsyncs it, renames it into place and fsyncs the directory. Destroyed without commit() (an error on the way), it
// removes the temporary file, so the final name only ever holds a whole file. Errors name `path`, not the
// temporary. A killed process leaves its temporary (perhaps gigabytes): the next AtomicFile of the same path on
// this host removes it, with a note on stderr. A symbolic link is followed (the link stays, its target is
// written); a device, FIFO or socket is refused (renamed over, it would become a plain file: /dev/null).
class AtomicFile {
   public:
    explicit AtomicFile(const std::string& path);
    ~AtomicFile();
    AtomicFile(const AtomicFile&) = delete;
    AtomicFile& operator=(const AtomicFile&) = delete;
    void write(const void* data, size_t bytes);
    void write_at(uint64_t offset, const void* data, size_t bytes);  // overwrite bytes already written
    void sync();    // everything on disk (fsync, close); the final name still holds what it held
    void commit();  // sync() if not done, then the rename: the final name holds the new file
    const std::string& path() const { return path_; }

   private:
    std::string path_, tmp_;  // tmp_ empty: nothing to remove
    int fd_ = -1;
    int lock_fd_ = -1;  // holds an flock on the temporary until it is renamed or removed
    uint64_t end_ = 0;  // where write() appends
    bool synced_ = false;
};
// The first n bytes as a quoted C string ("hi\n", "\x7fELF"), for messages about a file's magic.
std::string shown_bytes(const std::vector<uint8_t>& bytes, size_t n);

// Little-endian field access for binary headers.
inline uint32_t load_u32(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
inline uint64_t load_u64(const uint8_t* p) { return load_u32(p) | (uint64_t)load_u32(p + 4) << 32; }
inline void store_u32(uint8_t* p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
inline void store_u64(uint8_t* p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

}  // namespace tune
