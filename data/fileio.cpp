#include "data/fileio.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
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
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
    // TEACH: std::ifstream opens a directory without complaint on Linux, and tellg() then reports a size
    // near 2^63, so a directory given where a file belongs used to end in std::bad_alloc. fstat first.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st;
    if (::fstat(fd, &st) != 0) {
        const std::string err = std::strerror(errno);
        ::close(fd);
        throw Error(path + ": cannot stat (" + err + ")");
    }
    if (S_ISDIR(st.st_mode)) {
        ::close(fd);
        throw Error(path + ": is a directory, not a file");
    }
    // Read until end of file rather than trusting st_size, so pipes (<(...), /dev/stdin) work too; a regular
    // file is read straight into a buffer of its size.
    std::vector<uint8_t> bytes(S_ISREG(st.st_mode) ? (size_t)st.st_size : 0);
    size_t have = 0;
    uint8_t more[1 << 16];
    for (;;) {
        const bool room = have < bytes.size();
        const ssize_t got = room ? ::read(fd, bytes.data() + have, bytes.size() - have) : ::read(fd, more, sizeof more);
        if (got == 0) break;
        if (got < 0) {
            if (errno == EINTR) continue;
            const std::string err = std::strerror(errno);
            ::close(fd);
            throw Error(path + ": read failed (" + err + ")");
        }
        if (!room) bytes.insert(bytes.end(), more, more + got);
        have += (size_t)got;
    }
    bytes.resize(have);
    ::close(fd);
    return bytes;
}

void write_file_atomic(const std::string& path, const void* data, size_t bytes) {
    const std::string tmp = path + ".tmp." + std::to_string(getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        // Name the file asked for, not the temporary one the user never chose; the usual cause is the directory.
        const int err = errno;
        const size_t slash = path.find_last_of('/');
        const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
        struct stat st;
        if (::stat(dir.c_str(), &st) != 0) {
            if (errno == ENOENT) throw Error(path + ": cannot write: the directory " + dir + " does not exist");
            throw Error(path + ": cannot write: the directory " + dir + " cannot be reached (" + std::strerror(errno) +
                        ")");
        }
        if (!S_ISDIR(st.st_mode)) throw Error(path + ": cannot write: " + dir + " is not a directory");
        throw Error(path + ": cannot write (" + std::strerror(err) + ", creating the temporary file " + tmp + ")");
    }
    const char* p = static_cast<const char*>(data);
    size_t left = bytes;
    while (left > 0) {
        ssize_t w = ::write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            std::string err = std::strerror(errno);
            ::close(fd);
            ::unlink(tmp.c_str());
            throw Error(path + ": write failed (" + err + ")");
        }
        p += w;
        left -= (size_t)w;
    }
    // TEACH: without fsync the rename can reach the disk before the data does, and a power cut would
    // leave an empty "new" file in place of the old good one.
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        const std::string err = std::strerror(errno);  // before unlink can change errno
        ::unlink(tmp.c_str());
        throw Error(path + ": fsync/close failed (" + err + ")");
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        std::string err = std::strerror(errno);
        ::unlink(tmp.c_str());
        throw Error(path + ": rename from temporary file failed (" + err + ")");
    }
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
