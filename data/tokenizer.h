// GPT-2's byte-level BPE tokenizer: UTF-8 text (any bytes, in fact) -> token ids, and back.
//
// Encoding runs in three steps, the same as OpenAI's GPT-2 encoder and Hugging Face `tokenizers`:
//   1. pre-tokenise: cut the text into pieces with GPT-2's pattern
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (words with their leading space, runs of digits, runs of punctuation, whitespace);
//   2. each byte of a piece becomes its one-byte token (every one of the 256 bytes has one);
//   3. adjacent tokens merge, lowest rank (earliest line of vocab.bpe) first, leftmost first on a tie,
//      until no adjacent pair has a merge. Merges never cross pieces.
// Decoding concatenates the bytes of each token, so decode(encode(x)) == x for every byte string x.
//
// Choices where GPT-2 implementations differ (tests/test_tokenizer.cpp pins each one down):
//   - "<|endoftext|>" inside the text is ordinary text (27 91 437 1659 5239 91 29), as in tiktoken's
//     encode_ordinary and in a Hugging Face tokenizer built from encoder.json + vocab.bpe alone. (The
//     "gpt2" tokenizer on the Hugging Face hub registers it as an added token and would give 50256.)
//     So a document can never forge a document boundary; data preparation appends eot_token() itself.
//   - Bytes that are not valid UTF-8 (GPT-2's encoders accept only valid text) are each their own
//     piece, so each becomes its one-byte token; the valid runs between them are encoded exactly as
//     if each were a whole text on its own.
//
// Thread safety: a loaded Tokenizer is read-only except for its cache of encoded pieces, which is
// sharded and locked, so encode() may be called from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tune {

// The shipped GPT-2 vocabulary (data/gpt2/, MIT license): every tool's --vocab default.
inline constexpr const char* kDefaultVocab = "data/gpt2";

class Tokenizer {
public:
    // Reads DIR/encoder.json (token string -> id) and DIR/vocab.bpe (merges in rank order). A relative DIR
    // that is not under the working directory is looked for above the program too (bin/../DIR), so the
    // tools find the shipped vocabulary when they are run from anywhere.
    // Throws tune::Error naming the file, the line or entry, and what is wrong.
    static Tokenizer load(const std::string& dir = kDefaultVocab);

    Tokenizer(Tokenizer&&) noexcept;
    Tokenizer& operator=(Tokenizer&&) noexcept;
    ~Tokenizer();

    // Token ids of `text` (any bytes; see the header comment for invalid UTF-8). Never emits eot.
    std::vector<int32_t> encode(std::string_view text) const;
    // Same, appended to `out` (lets a caller build one long stream without copies).
    void encode_append(std::string_view text, std::vector<int32_t>& out) const;

    // The bytes the ids stand for. Throws tune::Error for an id outside [0, vocab_size()).
    std::string decode(const int32_t* ids, size_t n) const;  // ids: (n,)
    std::string decode(const std::vector<int32_t>& ids) const;

    // The raw bytes of one token (not necessarily valid UTF-8 on its own). Throws like decode.
    const std::string& token_bytes(int32_t id) const;

    int32_t eot_token() const;  // "<|endoftext|>", 50256 for GPT-2
    int vocab_size() const;     // V, 50257 for GPT-2

private:
    struct Impl;
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace tune
