// Small file helpers shared by every reader and writer: whole-file reads with clear errors, and atomic
// writes (temporary file in the same directory, fsync, rename), so a crash mid-write never leaves a
// half-written file under the final name.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tune {

std::vector<uint8_t> read_file_bytes(const std::string& path);  // throws tune::Error naming the file
void make_dirs(const std::string& dir);                          // mkdir -p; throws tune::Error
void write_file_atomic(const std::string& path, const void* data, size_t bytes);
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
