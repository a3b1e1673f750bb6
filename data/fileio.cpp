#include "data/fileio.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "kernels/common.h"

namespace tune {

void make_dirs(const std::string& dir) {
    std::string cur;
    std::stringstream ss(dir);
    std::string part;
    if (!dir.empty() && dir[0] == '/') cur = "/";
    while (std::getline(ss, part, '/')) {
        if (part.empty()) continue;
        cur += part + "/";
        if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
            throw Error(cur + ": cannot create directory (" + std::strerror(errno) + ")");
    }
    struct stat st;  // EEXIST above is also what a file of that name gives
    if (!dir.empty() && ::stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
        throw Error(dir + ": is a file, not a directory");
}

// Opens `path` for reading with the errors every reader here gives: missing, unreadable, a directory.
static int open_for_read(const std::string& path, struct stat& st) {
    // TEACH: std::ifstream opens a directory without complaint on Linux, and tellg() then reports a size
    // near 2^63, so a directory given where a file belongs used to end in std::bad_alloc. fstat first.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    if (::fstat(fd, &st) != 0) {
        const std::string err = std::strerror(errno);
        ::close(fd);
        throw Error(path + ": cannot stat (" + err + ")");
    }
    if (S_ISDIR(st.st_mode)) {
        ::close(fd);
        throw Error(path + ": is a directory, not a file");
    }
    return fd;
}

// read(2) that retries on EINTR and throws, naming `path`, on a real error.
static size_t read_some(int fd, void* to, size_t bytes, const std::string& path) {
    for (;;) {
        const ssize_t got = ::read(fd, to, bytes);
        if (got >= 0) return (size_t)got;
        if (errno == EINTR) continue;
        throw Error(path + ": read failed (" + std::strerror(errno) + ")");
    }
}

// Everything left in an open file, which is closed after: read until the end rather than trusting st_size, so
// pipes (<(...), /dev/stdin) work too; a regular file is read straight into a buffer of its size.
static std::vector<uint8_t> read_rest(int fd, const struct stat& st, const std::string& path) {
    std::vector<uint8_t> bytes(S_ISREG(st.st_mode) ? (size_t)st.st_size : 0);
    size_t have = 0;
    uint8_t more[1 << 16];
    try {
        for (;;) {
            const bool room = have < bytes.size();
            const size_t got = room ? read_some(fd, bytes.data() + have, bytes.size() - have, path)
                                    : read_some(fd, more, sizeof more, path);
            if (got == 0) break;
            if (!room) bytes.insert(bytes.end(), more, more + got);
            have += got;
        }
    } catch (...) {
        ::close(fd);
        throw;
    }
    bytes.resize(have);
    ::close(fd);
    return bytes;
}

std::string directory_of(const std::string& path) {
    const size_t slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
    struct stat st;
    const int fd = open_for_read(path, st);
    return read_rest(fd, st, path);
}

std::vector<uint8_t> read_file_head(const std::string& path, size_t probe,
                                    const std::function<size_t(const std::vector<uint8_t>&)>& length, size_t* total) {
    struct stat st;
    const int fd = open_for_read(path, st);
    if (!S_ISREG(st.st_mode)) {  // a pipe: no size to ask for, so all of it
        std::vector<uint8_t> all = read_rest(fd, st, path);
        *total = all.size();
        std::vector<uint8_t> head(all.begin(), all.begin() + (std::ptrdiff_t)std::min(probe, all.size()));
        if (head.size() == probe)
            head.assign(all.begin(), all.begin() + (std::ptrdiff_t)std::min(length(head), all.size()));
        return head;
    }
    const size_t size = (size_t)st.st_size;
    std::vector<uint8_t> head;
    try {
        auto fill = [&](size_t n) {  // head grows to n bytes, fewer at the end of the file
            size_t have = head.size();
            head.resize(std::max(have, std::min(n, size)));
            while (have < head.size()) {
                const size_t got = read_some(fd, head.data() + have, head.size() - have, path);
                if (got == 0) break;  // shrank since the stat
                have += got;
            }
            head.resize(have);
        };
        fill(probe);
        if (head.size() == probe) fill(length(head));
    } catch (...) {
        ::close(fd);
        throw;
    }
    ::close(fd);
    *total = size;
    return head;
}

// ---- mapped files cut short: SIGBUS with a message
// A fixed table of the live mappings that the signal handler can read without locks or allocation: a slot is
// claimed by swapping its state from free to filling, filled, then published as live.
namespace {
constexpr int kMappedSlots = 256;
constexpr size_t kMappedPathBytes = 480;
struct MappedSlot {
    std::atomic<int> state{0};  // 0 free, 1 being written, 2 live
    const uint8_t* begin = nullptr;
    size_t size = 0;
    char path[kMappedPathBytes] = {};
};
MappedSlot g_mapped[kMappedSlots];
struct sigaction g_previous_sigbus;

void write_all(const char* s) {
    for (size_t n = std::strlen(s); n > 0;) {
        const ssize_t w = ::write(STDERR_FILENO, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
    // A page of a file mapping that has no file behind it (BUS_ADRERR): the file is shorter than when it was
    // mapped, or its file system could not read the page. A sent SIGBUS (kill, raise) has no address.
    const uint8_t* at = static_cast<const uint8_t*>(info->si_addr);
    if (info->si_code == BUS_ADRERR)
        for (MappedSlot& m : g_mapped)
            if (m.state.load(std::memory_order_acquire) == 2 && at >= m.begin && at < m.begin + m.size) {
                struct stat st;  // async-signal-safe: stat, write and _exit only
                const bool shorter = ::stat(m.path, &st) != 0 || (size_t)st.st_size < m.size;
                write_all("error: ");
                write_all(m.path);
                write_all(shorter ? " was cut short (truncated, or rewritten in place) while it was being read: a "
                                    "file in use must stay as it is (write a new one and rename it over the old, as "
                                    "bin/prepare and bin/train do)\n"
                                  : " could not be read at a page of its memory mapping (an I/O error of its file "
                                    "system, or it was rewritten in place while read)\n");
                ::_exit(1);
            }
    // Not one of ours: whatever handled SIGBUS before (the default: end with a core) takes it, as it asked to.
    if (g_previous_sigbus.sa_flags & SA_RESETHAND) ::signal(SIGBUS, SIG_DFL);
    if (g_previous_sigbus.sa_flags & SA_SIGINFO) {
        if (g_previous_sigbus.sa_sigaction) return g_previous_sigbus.sa_sigaction(sig, info, context);
    } else if (g_previous_sigbus.sa_handler != SIG_IGN && g_previous_sigbus.sa_handler != SIG_DFL) {
        return g_previous_sigbus.sa_handler(sig);
    }
    ::signal(SIGBUS, SIG_DFL);  // to the default action: on return the faulting read runs again, or (a SIGBUS
    ::raise(sig);               // sent, not a fault) this one, pending until the handler returns, is delivered
}

void register_mapping(const void* begin, size_t size, const std::string& path) {
    static const bool installed = [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        return ::sigaction(SIGBUS, &sa, &g_previous_sigbus) == 0;
    }();
    (void)installed;
    for (MappedSlot& m : g_mapped) {
        int free_slot = 0;
        if (!m.state.compare_exchange_strong(free_slot, 1, std::memory_order_acq_rel)) continue;
        m.begin = static_cast<const uint8_t*>(begin);
        m.size = size;
        std::snprintf(m.path, sizeof m.path, "%s", path.c_str());
        m.state.store(2, std::memory_order_release);
        return;
    }
    // More live mappings than slots: this one's SIGBUS gets the default message. Nothing else changes.
}

void unregister_mapping(const void* begin) {
    for (MappedSlot& m : g_mapped)
        if (m.state.load(std::memory_order_acquire) == 2 && m.begin == begin) {
            m.state.store(0, std::memory_order_release);
            return;
        }
}
}  // namespace

MappedFile::MappedFile(const std::string& path) {
    struct stat st;
    const int fd = open_for_read(path, st);
    if (S_ISREG(st.st_mode) && st.st_size > 0) {
        void* p = ::mmap(nullptr, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            ::close(fd);  // the mapping keeps the file
            map_ = p;
            size_ = (size_t)st.st_size;
            register_mapping(map_, size_, path);
            return;
        }
        // Some file systems (FUSE mounts) cannot map: read it instead.
    }
    copy_ = read_rest(fd, st, path);  // a pipe (from this open, to its end), an empty file, or one not mappable
}

MappedFile::~MappedFile() {
    if (!map_) return;
    unregister_mapping(map_);
    ::munmap(map_, size_);
}

void check_readable(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || ::access(path.c_str(), R_OK) != 0)
        throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    if (S_ISDIR(st.st_mode)) throw Error(path + ": is a directory, not a file");
}

void require_rereadable(const std::string& path, const char* what) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) return;
    const char* kind = S_ISFIFO(st.st_mode) ? "a pipe" : S_ISCHR(st.st_mode) ? "a character device" : "not a file";
    throw Error(path + ": " + kind + ", where " + what + " must be a regular file (it is read more than once): " +
                "save it to a file first");
}

std::string host_name() {
    static const std::string host = [] {
        char buf[256] = {0};
        std::string h = ::gethostname(buf, sizeof buf - 1) == 0 ? buf : "";
        for (char& c : h)
            if (!std::isalnum((unsigned char)c) && c != '-') c = '-';  // no '.': names split on them
        return h.empty() ? std::string("host") : h;
    }();
    return host;
}

std::vector<std::string> remove_dead_temporaries(const std::string& dir, const std::string& name) {
    std::vector<std::string> removed;
    const std::string mark = ".tmp." + host_name() + ".";
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        const std::string file = e.path().filename().string();
        if (!name.empty() && file.rfind(name + mark, 0) != 0) continue;
        const size_t at = name.empty() ? file.find(mark) : name.size();
        if (at == std::string::npos || at == 0) continue;
        char* end = nullptr;
        const long pid = std::strtol(file.c_str() + at + mark.size(), &end, 10);
        if (pid <= 0 || *end != '.' || pid == (long)getpid() || !(::kill((pid_t)pid, 0) != 0 && errno == ESRCH))
            continue;
        // A pid is only this pid namespace's: a writer in another container with the same host name looks gone.
        // Its AtomicFile holds an flock on the temporary until the rename, which any process on this kernel sees.
        const int fd = ::open(e.path().c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0) continue;
        const bool in_use = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
        ::close(fd);
        if (in_use) continue;
        if (std::filesystem::remove(e.path(), ec)) removed.push_back(e.path().string());
    }
    return removed;
}

std::string dead_temporary_note(const std::string& path) {
    return path + ": left by a run that was killed (its process on this host is gone): removed";
}

int open_unique(const std::string& prefix, int flags, mode_t mode, std::string* name) {
    static std::atomic<uint64_t> counter{0};
    for (int attempt = 0; attempt < 100; attempt++) {
        *name = prefix + "." + host_name() + "." + std::to_string(getpid()) + "." + std::to_string(counter++);
        const int fd = ::open(name->c_str(), flags | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        if (fd >= 0 || errno != EEXIST) return fd;
    }
    return -1;  // errno is EEXIST
}

std::FILE* anonymous_scratch_file(const std::string& dir, const std::string& for_path) {
    std::string name;
    const int fd = open_unique(dir + "/.scratch", O_RDWR, 0600, &name);
    if (fd < 0) throw Error(for_path + ": cannot create a scratch file in " + dir + " (" + std::strerror(errno) + ")");
    ::unlink(name.c_str());  // nameless from here on: nothing to clean up, whatever ends the process
    std::FILE* f = ::fdopen(fd, "w+b");
    if (!f) {
        ::close(fd);
        throw Error(for_path + ": cannot open a scratch file in " + dir + " (" + std::strerror(errno) + ")");
    }
    return f;
}

DirLock::DirLock(const std::string& dir, const std::string& tool) : dir_(dir), path_(dir + "/.lock") {
    while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
    make_dirs(directory_of(dir_));
    for (int tries = 0;; tries++) {
        // Made here, or there already. A holder that made it may remove it, empty, at its end: then again.
        if (::mkdir(dir_.c_str(), 0755) == 0)
            made_ = true;
        else if (errno != EEXIST)
            throw Error(dir_ + ": cannot create directory (" + std::strerror(errno) + ")");
        make_dirs(dir_);  // a file of that name: said so
        const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 && errno == ENOENT && tries < 100) continue;  // removed between the two
        if (fd < 0) throw Error(path_ + ": cannot create this directory's lock: " + std::strerror(errno));
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
            const int err = errno;
            if (err != EWOULDBLOCK) {  // ENOLCK, ENOSYS, EOPNOTSUPP: this file system has no locks to take
                ::close(fd);
                ::unlink(path_.c_str());
                std::fprintf(stderr, "note: %s: its file system takes no lock (%s): nothing stops another run from "
                             "writing there at the same time\n", dir.c_str(), std::strerror(err));
                return;
            }
            char holder[128] = {0};
            const ssize_t n = ::pread(fd, holder, sizeof holder - 1, 0);
            ::close(fd);
            std::string who = n > 0 ? std::string(holder, (size_t)n) : "";
            while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
            throw Error(dir + ": in use by " + (who.empty() ? "another process" : who) +
                        "; two writers in one directory would overwrite each other's files: give another "
                        "directory, or wait for that one to end");
        }
        // The holder we waited on may have removed the file after we opened it: a lock on a file no longer under
        // the name locks nothing.
        struct stat held {}, named {};
        if (::fstat(fd, &held) == 0 && ::stat(path_.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
            held.st_ino == named.st_ino) {
            fd_ = fd;
            break;
        }
        ::close(fd);
    }
    const std::string me = tool + ", pid " + std::to_string((long)getpid()) + " on host " + host_name() + "\n";
    // Should this fail, only the message another run gets lacks the holder.
    const bool told = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) == (ssize_t)me.size();
    (void)told;
}

DirLock::~DirLock() {
    if (fd_ < 0) return;
    ::unlink(path_.c_str());  // before the release, so a waiter that opened this file sees it is gone
    ::close(fd_);
    if (made_) ::rmdir(dir_.c_str());  // a run refused before it wrote anything leaves no empty directory
}

bool same_file(const std::string& a, const std::string& b) {
    std::error_code ec;
    return a == b || std::filesystem::equivalent(a, b, ec);
}

size_t file_size_or_zero(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size : 0;
}

LineReader::LineReader(const std::string& path) : path_(path), buf_(1 << 20) {
    struct stat st;
    fd_ = open_for_read(path, st);
}

LineReader::~LineReader() {
    if (fd_ >= 0) ::close(fd_);
}

bool LineReader::next(std::string& line) {
    line.clear();
    for (;;) {
        const char* nl = static_cast<const char*>(std::memchr(buf_.data() + begin_, '\n', end_ - begin_));
        if (nl) {
            const size_t n = (size_t)(nl - (buf_.data() + begin_));
            line.append(buf_.data() + begin_, n);
            begin_ += n + 1;
            consumed_ += n + 1;
            return true;
        }
        // No newline in what is buffered: keep it and read more (a line longer than the buffer grows `line`).
        line.append(buf_.data() + begin_, end_ - begin_);
        consumed_ += end_ - begin_;
        begin_ = end_ = 0;
        if (eof_) return !line.empty();
        end_ = read_some(fd_, buf_.data(), buf_.size(), path_);
        eof_ = end_ == 0;
    }
}

namespace {

// The file a path names through its symbolic links (40 at most, as the kernel follows), the path itself when it
// is none: a link to a checkpoint stays a link, and its target gets the new file. A dangling link's target is
// created.
std::string through_links(std::string path) {
    for (int hops = 0; hops < 40; hops++) {
        std::error_code ec;
        if (!std::filesystem::is_symlink(path, ec)) break;
        const std::filesystem::path target = std::filesystem::read_symlink(path, ec);
        if (ec) break;
        path = target.is_absolute() ? target.string() : (std::filesystem::path(directory_of(path)) / target).string();
    }
    return path;
}

}  // namespace

std::string not_a_file_to_replace(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return "";
    const char* kind = S_ISCHR(st.st_mode)    ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : nullptr;
    return kind ? std::string(kind) + ", not a file (written whole beside it and renamed into place, it would be "
                                      "replaced by one): give a file's path"
                : "";
}

AtomicFile::AtomicFile(const std::string& path) : path_(through_links(path)) {
    if (const std::string why = not_a_file_to_replace(path_); !why.empty()) throw Error(path + ": is " + why);
    if (const std::string name = path_.substr(path_.rfind('/') + 1); !name.empty())
        for (const std::string& dead : remove_dead_temporaries(directory_of(path_), name))
            std::fprintf(stderr, "note: %s\n", dead_temporary_note(dead).c_str());
    // Two AtomicFiles for one path in a process, or a reused pid, must not share (and truncate) one temporary.
    fd_ = open_unique(path_ + ".tmp", O_WRONLY, 0666, &tmp_);  // less the umask, as any new file
    if (fd_ >= 0) {
        // Held until the rename (sync() closes fd_, not this duplicate): remove_dead_temporaries leaves it alone.
        lock_fd_ = ::dup(fd_);
        if (lock_fd_ >= 0) (void)::flock(lock_fd_, LOCK_EX | LOCK_NB);  // a file system without locks: no lock
        return;
    }
    // Name the file asked for, not the temporary one the user never chose; the usual cause is the directory.
    const int err = errno;
    const std::string dir = directory_of(path_);
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0) {
        if (errno == ENOENT) throw Error(path + ": cannot write: the directory " + dir + " does not exist");
        throw Error(path + ": cannot write: the directory " + dir + " cannot be reached (" + std::strerror(errno) +
                    ")");
    }
    if (!S_ISDIR(st.st_mode)) throw Error(path + ": cannot write: " + dir + " is not a directory");
    throw Error(path + ": cannot write (" + std::strerror(err) + ", creating the temporary file " + tmp_ + ")");
}

AtomicFile::~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!tmp_.empty()) ::unlink(tmp_.c_str());  // never committed
    if (lock_fd_ >= 0) ::close(lock_fd_);
}

void AtomicFile::write(const void* data, size_t bytes) {
    write_at(end_, data, bytes);
    end_ += bytes;
}

void AtomicFile::write_at(uint64_t offset, const void* data, size_t bytes) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
        const ssize_t w = ::pwrite(fd_, p, bytes, (off_t)offset);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw Error(path_ + ": write failed (" + std::strerror(errno) + ")");
        }
        p += w;
        offset += (uint64_t)w;
        bytes -= (size_t)w;
    }
}

void AtomicFile::sync() {
    // TEACH: without fsync the rename can reach the disk before the data does, and a power cut would
    // leave an empty "new" file in place of the old good one.
    if (synced_) return;
    const int fd = fd_;
    fd_ = -1;
    synced_ = true;
    std::string err;  // taken before unlink can change errno
    if (::fsync(fd) != 0) err = std::strerror(errno);
    if (::close(fd) != 0 && err.empty()) err = std::strerror(errno);
    if (!err.empty()) {
        ::unlink(tmp_.c_str());
        tmp_.clear();
        throw Error(path_ + ": fsync/close failed (" + err + ")");
    }
}

void AtomicFile::commit() {
    sync();
    if (tmp_.empty()) throw Error(path_ + ": already failed to write");
    const std::string tmp = tmp_;
    tmp_.clear();  // renamed or removed below: nothing left for the destructor
    if (::rename(tmp.c_str(), path_.c_str()) != 0) {
        const std::string err = std::strerror(errno);
        ::unlink(tmp.c_str());
        throw Error(path_ + ": rename from temporary file failed (" + err + ")");
    }
    ::close(lock_fd_);  // the temporary is the file now
    lock_fd_ = -1;
    // The rename itself reaches the disk with the directory. Some file systems cannot fsync a directory; the
    // file is whole under its final name either way, so that is not an error.
    const int d = ::open(directory_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d >= 0) {
        (void)::fsync(d);
        ::close(d);
    }
}

void write_file_atomic(const std::string& path, const void* data, size_t bytes) {
    AtomicFile f(path);
    f.write(data, bytes);
    f.commit();
}

std::string shown_bytes(const std::vector<uint8_t>& bytes, size_t n) {
    std::string out = "\"";
    for (size_t i = 0; i < std::min(n, bytes.size()); i++) {
        const uint8_t c = bytes[i];
        if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c == '"' || c == '\\') out += std::string("\\") + (char)c;
        else if (c >= 0x20 && c < 0x7f) out += (char)c;
        else {
            char hex[5];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out += hex;
        }
    }
    return out + "\"";
}

}  // namespace tune
