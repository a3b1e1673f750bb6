// GPT-2 byte-level BPE tokenizer (see tokenizer.h for the algorithm and the choices it makes).
//
// Data layout after load() (Tokenizer::Impl):
//   token_bytes  (V,) the raw bytes of each token; decode() concatenates these
//   byte_id      (256,) the one-byte token of each byte value
//   merges       pair of token ids (left, right) -> (rank, merged id); open addressing, no erase
//   cache        piece bytes -> its token ids; 64 locked shards, each cleared when it fills
// Pre-tokenisation is PCRE2, JIT-compiled once in load(); each thread has its own match data.
#include "data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <queue>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "data/fileio.h"
#include "data/json_depth.h"
#include "kernels/common.h"

namespace tune {
namespace {

// GPT-2's split pattern, byte for byte. PCRE2_UCP makes \s, \p{L}, \p{N} Unicode-aware.
constexpr const char* kSplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Unicode's White_Space property: the 25 characters that \s means to Python's `regex` (OpenAI's GPT-2
// encoder) and to Oniguruma (Hugging Face `tokenizers`). PCRE2's own \s with UCP also matches U+180E
// MONGOLIAN VOWEL SEPARATOR (whitespace before Unicode 6.3) and would split "a\u180Eb" differently.
constexpr const char* kWhiteSpaceSet =
    R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// kSplitPattern with \s and \S spelled out as kWhiteSpaceSet, inside and outside [...] classes.
std::string pcre2_split_pattern() {
    std::string out;
    bool in_class = false;
    for (const char* p = kSplitPattern; *p; ++p) {
        if (p[0] == '\\' && (p[1] == 's' || p[1] == 'S')) {
            assert(!(in_class && p[1] == 'S'));  // [^...\S...] has no plain spelling; GPT-2 never uses it
            out += in_class ? kWhiteSpaceSet : std::string(p[1] == 's' ? "[" : "[^") + kWhiteSpaceSet + "]";
            ++p;
            continue;
        }
        if (p[0] == '\\' && p[1] != '\0') {
            out += p[0];
            out += *++p;
            continue;
        }
        if (*p == '[') in_class = true;
        if (*p == ']') in_class = false;
        out += *p;
    }
    return out;
}

constexpr const char* kEndOfText = "<|endoftext|>";

constexpr size_t kCacheShards = 64;            // power of two; shard = hash & (kCacheShards - 1)
constexpr size_t kCacheEntriesPerShard = 4096;  // 256K pieces (~30 MB) in all; a full shard is cleared
constexpr size_t kCacheMaxPieceBytes = 256;     // longer pieces are rare; caching them buys nothing
constexpr size_t kShortPieceBytes = 64;         // up to here, the quadratic merge loop is fastest

// TEACH: GPT-2 works on bytes, but its vocabulary files are text, and a JSON/text file cannot hold
// raw bytes like 0x00 or 0x0A cleanly. So each byte gets a stand-in Unicode character: the 188
// printable Latin-1 bytes stand for themselves, and the other 68 (controls, space, 0x7F-0xA0, the
// soft hyphen 0xAD) get U+0100, U+0101, ... in byte order. A space is 'Ġ' (U+0120), a newline 'Ċ'.
// This table exists only to read the files: once loaded, everything is raw bytes.
std::array<uint32_t, 256> byte_to_codepoint_table() {
    std::array<uint32_t, 256> cp{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
        bool stands_for_itself = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp[b] = stands_for_itself ? b : next++;
    }
    return cp;
}

// Inverse of the table above: code point -> byte, or -1. All stand-ins are below 256 + 68.
constexpr uint32_t kMaxStandIn = 256 + 68;
std::array<int, kMaxStandIn> codepoint_to_byte_table() {
    std::array<int, kMaxStandIn> inv;
    inv.fill(-1);
    std::array<uint32_t, 256> cp = byte_to_codepoint_table();
    for (int b = 0; b < 256; ++b) inv[cp[b]] = b;
    return inv;
}

std::string read_whole_file(const std::string& path) {
    const std::vector<uint8_t> bytes = read_file_bytes(path);  // names the file, and says so for a directory
    return std::string(bytes.begin(), bytes.end());
}

// Decodes one UTF-8 string of stand-in characters into the bytes they stand for. `where` names the
// file and entry for the error message.
std::string standins_to_bytes(const std::string& s, const std::string& where) {
    static const std::array<int, kMaxStandIn> inv = codepoint_to_byte_table();
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        uint32_t cp;
        size_t len;
        if (c < 0x80) {
            cp = c;
            len = 1;
        } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size() && (s[i + 1] & 0xC0) == 0x80) {
            cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
            len = 2;
        } else {
            cp = UINT32_MAX;  // 3- and 4-byte characters are never stand-ins
            len = 1;
        }
        if (cp >= kMaxStandIn || inv[cp] < 0) {
            char hex[16];
            std::snprintf(hex, sizeof hex, "0x%02X", c);
            throw Error(where + ": character starting with byte " + hex +
                        " is not one of GPT-2's 256 byte stand-in characters");
        }
        out.push_back(static_cast<char>(inv[cp]));
        i += len;
    }
    return out;
}

// Frees the thread's PCRE2 match data when the thread ends. The pattern has no capture groups, so
// one ovector pair (the whole match) is all any call needs.
struct ThreadMatchData {
    pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
    ~ThreadMatchData() { pcre2_match_data_free(md); }
};

pcre2_match_data* thread_match_data() {
    thread_local ThreadMatchData tmd;
    if (tmd.md == nullptr) throw std::bad_alloc();
    return tmd.md;
}

}  // namespace

struct Tokenizer::Impl {
    struct Merge {
        int32_t rank;    // line of vocab.bpe (0 = first merge): lower merges first
        int32_t merged;  // id of the concatenated token
    };

    // (left id, right id) -> Merge. Linear probing over a power-of-two table at most half full.
    struct MergeTable {
        static constexpr uint64_t kEmpty = UINT64_MAX;
        std::vector<uint64_t> keys;
        std::vector<Merge> vals;
        uint64_t mask = 0;
        int shift = 64;

        static uint64_t key(int32_t a, int32_t b) {
            return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
        }
        size_t slot(uint64_t k) const { return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> shift); }

        void reserve(size_t n) {
            size_t cap = 16;
            int bits = 4;
            while (cap < 2 * n) cap <<= 1, ++bits;
            keys.assign(cap, kEmpty);
            vals.assign(cap, Merge{0, 0});
            mask = cap - 1;
            shift = 64 - bits;
        }
        // Returns false if the pair is already present (the caller reports the duplicate).
        bool insert(int32_t a, int32_t b, Merge m) {
            uint64_t k = key(a, b);
            for (size_t s = slot(k);; s = (s + 1) & mask) {
                if (keys[s] == k) return false;
                if (keys[s] == kEmpty) {
                    keys[s] = k;
                    vals[s] = m;
                    return true;
                }
            }
        }
        const Merge* find(int32_t a, int32_t b) const {
            uint64_t k = key(a, b);
            for (size_t s = slot(k);; s = (s + 1) & mask) {
                if (keys[s] == k) return &vals[s];
                if (keys[s] == kEmpty) return nullptr;
            }
        }
    };

    struct CacheShard {
        std::mutex mu;
        std::unordered_map<std::string, std::vector<int32_t>> map;
    };

    std::vector<std::string> token_bytes;  // (V,)
    std::array<int32_t, 256> byte_id{};
    MergeTable merges;
    int32_t eot = -1;
    pcre2_code* re = nullptr;
    bool jit = false;
    mutable std::array<CacheShard, kCacheShards> cache;

    ~Impl() { pcre2_code_free(re); }

    void load_encoder(const std::string& path, std::unordered_map<std::string, int32_t>& bytes_to_id);
    void load_merges(const std::string& path, const std::unordered_map<std::string, int32_t>& bytes_to_id);
    void compile_pattern();

    void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
    void merge_short(std::vector<int32_t>& word) const;
    void merge_long(std::vector<int32_t>& word) const;
};

void Tokenizer::Impl::load_encoder(const std::string& path, std::unordered_map<std::string, int32_t>& bytes_to_id) {
    std::string text = read_whole_file(path);
    check_json_depth(text, path);
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
        throw Error(path + ": not valid JSON: " + json_reason(e));
    }
    if (!j.is_object() || j.empty())
        throw Error(path + ": expected a non-empty JSON object mapping token strings to ids, got " +
                    std::string(j.type_name()));

    const size_t n = j.size();
    token_bytes.assign(n, std::string());
    std::vector<bool> seen(n, false);
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string where = path + ": entry \"" + it.key() + "\"";
        if (!it.value().is_number_integer())
            throw Error(where + ": id must be an integer, got " + it.value().dump());
        // The parser keeps a non-negative integer unsigned; get<int64_t> would wrap one above INT64_MAX negative.
        const bool huge = it.value().is_number_unsigned() && it.value().get<uint64_t>() >= n;
        const int64_t id = huge ? -1 : it.value().get<int64_t>();
        if (id < 0 || static_cast<uint64_t>(id) >= n)
            throw Error(where + ": id " + it.value().dump() + " is outside 0.." + std::to_string(n - 1) +
                        " (the ids of " + std::to_string(n) + " entries must be 0..N-1, each once)");
        if (seen[id]) throw Error(where + ": id " + std::to_string(id) + " is used by another entry too");
        if (it.key().empty()) throw Error(path + ": empty token string for id " + std::to_string(id));
        seen[id] = true;
        token_bytes[id] = standins_to_bytes(it.key(), where);
        bytes_to_id.emplace(token_bytes[id], static_cast<int32_t>(id));
    }

    for (int b = 0; b < 256; ++b) {
        auto it = bytes_to_id.find(std::string(1, static_cast<char>(b)));
        if (it == bytes_to_id.end())
            throw Error(path + ": no token for byte " + std::to_string(b) +
                        "; a byte-level vocabulary needs one for each of the 256 bytes");
        byte_id[b] = it->second;
    }
    auto e = bytes_to_id.find(kEndOfText);
    if (e == bytes_to_id.end()) throw Error(path + ": no \"" + std::string(kEndOfText) + "\" entry");
    eot = e->second;
}

void Tokenizer::Impl::load_merges(const std::string& path,
                                  const std::unordered_map<std::string, int32_t>& bytes_to_id) {
    std::string text = read_whole_file(path);
    if (!text.empty() && text.back() == '\n') text.pop_back();

    std::vector<std::string_view> lines;
    for (size_t start = 0;;) {
        size_t nl = text.find('\n', start);
        std::string_view line(text.data() + start, (nl == std::string::npos ? text.size() : nl) - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        lines.push_back(line);
        if (nl == std::string::npos) break;
        start = nl + 1;
    }
    if (text.empty()) throw Error(path + ": empty file; expected BPE merges, one \"A B\" pair a line");

    merges.reserve(lines.size());
    int32_t rank = 0;
    std::unordered_set<int32_t> made;  // the tokens the merges make
    for (size_t i = 0; i < lines.size(); ++i) {
        std::string_view line = lines[i];
        const std::string where = path + ": line " + std::to_string(i + 1);
        if (i == 0 && line.substr(0, 8) == "#version") continue;
        size_t sp = line.find(' ');
        if (sp == std::string_view::npos || sp == 0 || sp + 1 == line.size() ||
            line.find(' ', sp + 1) != std::string_view::npos)
            throw Error(where + ": expected two tokens separated by one space, got \"" + std::string(line) + "\"");
        std::string left = standins_to_bytes(std::string(line.substr(0, sp)), where);
        std::string right = standins_to_bytes(std::string(line.substr(sp + 1)), where);
        auto find = [&](const std::string& bytes, std::string_view shown) {
            auto it = bytes_to_id.find(bytes);
            if (it == bytes_to_id.end())
                throw Error(where + ": token \"" + std::string(shown) + "\" is not in encoder.json");
            return it->second;
        };
        int32_t a = find(left, line.substr(0, sp));
        int32_t b = find(right, line.substr(sp + 1));
        int32_t merged = find(left + right, std::string(line.substr(0, sp)) + std::string(line.substr(sp + 1)));
        if (!merges.insert(a, b, Merge{rank, merged}))
            throw Error(where + ": merge \"" + std::string(line) + "\" repeats an earlier line");
        made.insert(merged);
        ++rank;
    }
    // A file cut at a line's end reads as a shorter, valid list, and would encode every text differently from
    // GPT-2 (999 merges of 50,000: "Hello" became four tokens): every token of more than one byte, but the
    // end-of-text one, must be made by some merge.
    size_t unmade = 0;
    int32_t first = -1;
    std::string first_bytes;
    for (const auto& [bytes, id] : bytes_to_id)
        if (bytes.size() > 1 && bytes != kEndOfText && !made.count(id) && (++unmade, first < 0 || id < first))
            first = id, first_bytes = bytes;
    if (unmade)
        throw Error(path + ": " + std::to_string(unmade) + " of encoder.json's tokens are made by no merge here (the " +
                    "first, id " + std::to_string(first) + ": " +
                    shown_bytes(std::vector<uint8_t>(first_bytes.begin(), first_bytes.end()), 32) + "); it has " +
                    std::to_string(rank) + " merges: is it cut short, or from another vocabulary?");
}

void Tokenizer::Impl::compile_pattern() {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    // TEACH: PCRE2_MATCH_INVALID_UTF lets the matcher run on any bytes: an invalid UTF-8 sequence
    // matches nothing, so matches stop at it and the bytes between matches are exactly the invalid
    // ones. Without it PCRE2 would reject the whole text (or, with NO_UTF_CHECK, misbehave).
    const std::string pattern = pcre2_split_pattern();
    re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_offset, nullptr);
    if (re == nullptr) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        throw std::logic_error("tokenizer: PCRE2 rejected the GPT-2 pattern at offset " +
                               std::to_string(err_offset) + ": " + reinterpret_cast<char*>(msg));
    }
    // Without JIT support (some builds of PCRE2 lack it) the interpreter gives the same matches, slower.
    jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
}

// Merges a word (the one-byte tokens of a piece) in place. The pair ranks of neighbours are kept in
// `rank` so each merge looks up only the two pairs it changes.
void Tokenizer::Impl::merge_short(std::vector<int32_t>& word) const {
    thread_local std::vector<Merge> pair;  // pair[i]: merge of (word[i], word[i+1]), rank INT32_MAX if none
    auto lookup = [&](size_t i) {
        const Merge* m = merges.find(word[i], word[i + 1]);
        return m ? *m : Merge{INT32_MAX, -1};
    };
    pair.resize(word.size() - 1);
    for (size_t i = 0; i + 1 < word.size(); ++i) pair[i] = lookup(i);
    while (word.size() > 1) {
        size_t best = 0;
        for (size_t i = 1; i < pair.size(); ++i)
            if (pair[i].rank < pair[best].rank) best = i;  // strict <: leftmost wins a tie
        if (pair[best].rank == INT32_MAX) break;
        word[best] = pair[best].merged;
        word.erase(word.begin() + best + 1);
        pair.erase(pair.begin() + best);
        if (best < pair.size()) pair[best] = lookup(best);
        if (best > 0) pair[best - 1] = lookup(best - 1);
    }
}

// Same result as merge_short in O(n log n) for long pieces (a line of 10,000 '=' is one piece): the
// symbols form a linked list, candidate merges sit in a heap ordered by (rank, position), and a
// candidate whose pair has changed since it was pushed is skipped when popped.
void Tokenizer::Impl::merge_long(std::vector<int32_t>& word) const {
    const int32_t n = static_cast<int32_t>(word.size());
    std::vector<int32_t> prev(n), next(n);
    for (int32_t i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
    using Candidate = std::pair<int32_t, int32_t>;  // (rank, left position)
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto push = [&](int32_t left) {
        if (left < 0 || next[left] < 0) return;
        if (const Merge* m = merges.find(word[left], word[next[left]])) heap.push({m->rank, left});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
        auto [rank, left] = heap.top();
        heap.pop();
        if (word[left] < 0 || next[left] < 0) continue;  // merged away, or now last
        int32_t right = next[left];
        const Merge* m = merges.find(word[left], word[right]);
        if (m == nullptr || m->rank != rank) continue;  // stale: a rank names exactly one pair
        word[left] = m->merged;
        word[right] = -1;
        next[left] = next[right];
        if (next[right] >= 0) prev[next[right]] = left;
        push(prev[left]);
        push(left);
    }
    word.erase(std::remove(word.begin(), word.end(), -1), word.end());
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
    if (piece.size() == 1) {
        out.push_back(byte_id[static_cast<unsigned char>(piece[0])]);
        return;
    }
    const bool cacheable = piece.size() <= kCacheMaxPieceBytes;
    CacheShard* shard = nullptr;
    std::string key;
    if (cacheable) {
        shard = &cache[std::hash<std::string_view>{}(piece) & (kCacheShards - 1)];
        key.assign(piece);
        std::lock_guard<std::mutex> lock(shard->mu);
        auto it = shard->map.find(key);
        if (it != shard->map.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }

    thread_local std::vector<int32_t> word;
    word.clear();
    for (char c : piece) word.push_back(byte_id[static_cast<unsigned char>(c)]);
    if (word.size() <= kShortPieceBytes)
        merge_short(word);
    else
        merge_long(word);
    out.insert(out.end(), word.begin(), word.end());

    if (cacheable) {
        std::lock_guard<std::mutex> lock(shard->mu);
        if (shard->map.size() >= kCacheEntriesPerShard) shard->map.clear();  // bounded memory
        shard->map.emplace(std::move(key), word);
    }
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

std::string locate_vocab_dir(const std::string& dir) {
    std::error_code ec;
    if (dir.empty() || dir[0] == '/' || std::filesystem::exists(dir + "/encoder.json", ec)) return dir;
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec) return dir;
    // bin/train finds <repo>/data/gpt2 one level up; build/emu/bin/train three.
    for (std::filesystem::path p = exe.parent_path(); p.has_relative_path(); p = p.parent_path())
        if (std::filesystem::exists(p / dir / "encoder.json", ec)) return (p / dir).string();
    return dir;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& given) {
    if (given.empty()) throw UsageError("--vocab: empty (an unset variable?); give the folder with encoder.json");
    const std::string dir = locate_vocab_dir(given);
    // A folder that is not there is the command line's mistake (exit 2), like any path named there that does not
    // exist; a folder whose files are missing or malformed is bad data (exit 1), said by the readers below.
    // (A folder that cannot be reached, EACCES, is left to the readers: they say why.)
    std::error_code ec;
    const auto type = std::filesystem::status(dir, ec).type();
    if (type == std::filesystem::file_type::not_found)
        throw UsageError("--vocab: no such directory: " + given +
                         (given[0] == '/' ? "" : " (here, nor one holding encoder.json above the program's folder)") +
                         "; give the folder with GPT-2's encoder.json and vocab.bpe (data/gpt2 in the repository)");
    if (!ec && type != std::filesystem::file_type::directory)
        throw UsageError("--vocab: " + given + ": is a file, not a directory; give the folder with GPT-2's "
                         "encoder.json and vocab.bpe");
    auto impl = std::make_unique<Impl>();
    std::unordered_map<std::string, int32_t> bytes_to_id;
    impl->load_encoder(dir + "/encoder.json", bytes_to_id);
    impl->load_merges(dir + "/vocab.bpe", bytes_to_id);
    impl->compile_pattern();
    return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 16);  // English runs ~4 bytes a token
    encode_append(text, out);
    return out;
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out) const {
    const Impl& m = *impl_;
    auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    pcre2_match_data* md = thread_match_data();
    size_t pos = 0;
    while (pos < text.size()) {
        // TEACH: pcre2_jit_match skips pcre2_match's argument checks, which matters when it is
        // called once per word; it is safe here because the pattern was compiled for invalid UTF.
        int rc = m.jit ? pcre2_jit_match(m.re, subject, text.size(), pos, 0, md, nullptr)
                       : pcre2_match(m.re, subject, text.size(), pos, 0, md, nullptr);
        size_t start = text.size(), end = text.size();
        if (rc >= 0) {
            const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
            start = ov[0];
            end = ov[1];
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            throw std::runtime_error("tokenizer: PCRE2 match failed at byte " + std::to_string(pos) + ": " +
                                     reinterpret_cast<char*>(msg));
        }
        assert(start >= pos && end >= start);
        // Bytes the pattern skipped are invalid UTF-8: each is its own one-byte token.
        for (; pos < start; ++pos) out.push_back(m.byte_id[static_cast<unsigned char>(text[pos])]);
        if (end == start) {  // no match, or (never for this pattern) an empty one
            if (pos < text.size()) out.push_back(m.byte_id[static_cast<unsigned char>(text[pos++])]);
            continue;
        }
        m.encode_piece(text.substr(start, end - start), out);
        pos = end;
    }
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
    if (id < 0 || id >= vocab_size())
        throw Error("token id " + std::to_string(id) + " is out of range: the vocabulary has ids 0.." +
                    std::to_string(vocab_size() - 1));
    return impl_->token_bytes[id];
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) const {
    std::string out;
    out.reserve(n * 4);
    for (size_t i = 0; i < n; ++i) out += token_bytes(ids[i]);
    return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }

int32_t Tokenizer::eot_token() const { return impl_->eot; }

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->token_bytes.size()); }

}  // namespace tune
