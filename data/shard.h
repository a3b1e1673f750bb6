// Token shards: the files bin/prepare writes and bin/train reads.
//
// Layout (little-endian):
//   offset  0  char[8]  magic "TUNETOK1"
//           8  u32      version (1)
//          12  u32      token width in bytes (2 or 4)
//          16  u64      token count n
//          24  u32      has_mask (0 or 1)
//          28  u32      vocabulary size the ids were checked against (0 = unknown)
//          32  tokens   n * width bytes
//              mask     n bytes when has_mask: 1 = the loss counts this token as a target, 0 = it does not
// Nothing may follow. A window of T+1 tokens gives inputs tokens[s..s+T-1], targets tokens[s+1..s+T]
// and loss weights mask[s+1..s+T] (all 1 without a mask).
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "data/fileio.h"
#include "model/rng.h"

namespace tune {

constexpr char kShardMagic[8] = {'T', 'U', 'N', 'E', 'T', 'O', 'K', '1'};
constexpr uint32_t kShardVersion = 1;

// A shard as read: its file stays memory-mapped (MappedFile), and tokens are decoded from it when asked for,
// so holding a shard costs page cache, shared between processes, rather than 5 bytes a token of private
// memory.
struct Shard {
    std::string path;
    std::shared_ptr<const MappedFile> file;
    const uint8_t* token_bytes = nullptr;  // n * width, inside file
    const uint8_t* mask_bytes = nullptr;   // n, or null when the file has no mask
    uint64_t n = 0;
    uint32_t width = 2;
    uint32_t vocab = 0;           // the vocabulary size its writer checked the ids against (0: unknown)
    uint64_t masked_targets = 0;  // tokens 1..n-1 (the targets) whose loss weight is 0, counted as read

    size_t size() const { return n; }
    int32_t token(size_t i) const {
        const uint8_t* p = token_bytes + i * width;
        return width == 2 ? (int32_t)(p[0] | p[1] << 8) : (int32_t)load_u32(p);
    }
    bool has_mask() const { return mask_bytes != nullptr; }
    uint8_t mask(size_t i) const { return mask_bytes ? mask_bytes[i] : 1; }
    // Copies, for tests and tools.
    std::vector<int32_t> tokens() const;
    std::vector<uint8_t> mask_vector() const;  // empty when the file has no mask
};

// Writes atomically (temporary file, fsync, rename). Token width is 2 when every id fits in 16 bits.
void write_shard(const std::string& path, const std::vector<int32_t>& tokens, const std::vector<uint8_t>* mask,
                 uint32_t vocab_size);

// A shard written as it is produced, in bounded memory (bin/prepare on any amount of data): the tokens go to
// the file at once, the mask (which follows every token in the layout) to a nameless scratch file beside it
// until seal(), which appends it and fills in the count; commit() then renames the file into place. Always
// with a mask; token width 2 when vocab_size fits 16 bits (then the same bytes as write_shard of everything
// appended). Nothing is left under `path` unless commit() is reached; the temporary file beside it is
// removed on any error (a killed process leaves `path.tmp.HOST.PID.N`).
class ShardWriter {
   public:
    ShardWriter(const std::string& path, uint32_t vocab_size);
    ~ShardWriter();
    ShardWriter(const ShardWriter&) = delete;
    ShardWriter& operator=(const ShardWriter&) = delete;
    void append(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask);
    void seal();    // mask, header, fsync: complete on disk, not yet under its name
    void commit();  // seal() if not done, then the rename
    uint64_t tokens() const { return n_; }

   private:
    std::unique_ptr<AtomicFile> file_;
    std::FILE* mask_ = nullptr;  // nameless scratch file in the shard's directory
    uint32_t vocab_, width_;
    uint64_t n_ = 0;
    bool sealed_ = false;
    std::vector<uint8_t> packed_;
};

// Reads and validates: magic, version, width, sizes against the file size, every id < vocab_size
// (when vocab_size > 0; else < 2^31). Throws tune::Error naming the file and the field.
Shard read_shard(const std::string& path, int vocab_size);
// read_shard of each, refusing a shard with nothing to predict or none of its targets counted (a broken
// preparation), as a Loader needs them.
std::vector<Shard> read_shards(const std::vector<std::string>& paths, int vocab_size);
// Whether some target of the shards has loss weight 0: prompt/completion data, not plain text.
bool any_masked(const std::vector<Shard>& shards);

// One micro-batch: B rows of T positions, in host memory.
struct Batch {
    int B = 0, T = 0;
    std::vector<int32_t> inputs;   // (B, T)
    std::vector<int32_t> targets;  // (B, T)
    std::vector<float> weights;    // (B, T) loss weight per target
    std::vector<int32_t> positions;  // (B, T) each token's position in its document (isolated windows), else empty
    const int32_t* positions_or_null() const { return positions.empty() ? nullptr : positions.data(); }
};

// How a loader cuts shards into windows (`bin/train --windows`): every T tokens; whole documents packed
// together from an <|endoftext|>; one whole document a window, so that nothing from another document is in its
// attention (at the price of more padding); or packed as `documents` but isolated, each document attending to
// itself only, at positions from 0 (Batch::positions): `single`'s view at `documents`' padding.
enum class Windows { fixed, documents, single, isolated };
const char* windows_name(Windows w);  // "fixed", "documents", "single", "isolated"
// The Windows that name stands for, into *w; false (*w untouched) for any other text.
bool windows_from_name(const std::string& v, Windows* w);
// One of those names, else a UsageError naming --windows and the value.
Windows parse_windows(const std::string& v);
// --windows of bin/train and bin/evaluate, which also take "auto" (the tool decides by the data): true for auto,
// else false with *w set; a UsageError names any other value.
bool parse_windows_flag(const std::string& v, Windows* w);

// Loader position: everything needed to continue exactly where a run stopped.
struct LoaderState {
    uint64_t epoch = 0;
    uint64_t cursor = 0;  // windows consumed by all ranks in this epoch (< its windows)
};

// Serves B x T windows from one or more shards. Windows start every T tokens inside each shard (they
// never cross shards); a shard shorter than T+1 tokens is one window, padded with weight 0. Document windows
// (doc_end, `bin/train --windows documents`) start where a document does instead and hold whole documents,
// padded; `--windows single` only one each. A document longer than T targets is cut into
// windows of T. Shuffled: each epoch visits the windows in
// a permutation drawn from (seed, epoch); sequential: in file order. With world_size ranks, rank r takes
// windows r, r+W, r+2W, ... of the epochs' orders joined end to end (a round at an epoch's end runs on into the
// next epoch), so ranks see disjoint data, every epoch reads every window once, and the windows a step reads
// depend only on the global batch, not on how many ranks share it.
class Loader {
   public:
    // doc_end >= 0: document windows, documents ending with that token, cut as `windows` says (documents, single:
    // one a window, isolated: batches carry each token's position in its document); -1: fixed windows.
    Loader(const std::vector<std::string>& paths, int vocab_size, int B, int T, bool shuffle, uint64_t seed,
           int rank = 0, int world_size = 1, int32_t doc_end = -1, Windows windows = Windows::documents)
        : Loader(read_shards(paths, vocab_size), vocab_size, B, T, shuffle, seed, rank, world_size, doc_end,
                 windows) {}
    // Over shards already read (read_shards), for a caller that looked at them first.
    Loader(std::vector<Shard> shards, int vocab_size, int B, int T, bool shuffle, uint64_t seed, int rank = 0,
           int world_size = 1, int32_t doc_end = -1, Windows windows = Windows::documents);

    Batch next();
    // Like next(), but never starts a new epoch: the next min(B, windows left) windows of this rank's
    // epoch (so the last batch may be smaller), or false when none are left. Evaluation uses it, so
    // that no window is counted twice and none is left out, over all ranks together: the last round may be
    // partial, and a rank may have fewer windows than another, or none (next() needs at least one per rank).
    bool next_in_epoch(Batch& b);
    size_t num_windows() const { return windows_.size(); }
    // The share of the windows' positions that hold a target of their own rather than padding (or a target the
    // window before holds): near 1 for fixed windows over long shards, lower for document windows.
    double filled() const;
    // Document windows: the documents longer than a window, each cut into windows of T (those after its first
    // start without its beginning, a fine-tuning example's prompt). 0 for fixed windows.
    uint64_t long_documents() const { return long_documents_; }
    // How the windows cut the documents (ending with doc_end) of prompt/completion data: the counted targets
    // that sit in a window starting after their document's first token, so that the words before them that
    // the window leaves out (an example's prompt, or its beginning) cannot be attended to, in documents that
    // one window could hold whole (document windows keep those whole; they cut only longer ones). Looks at
    // the windows in file order until it has seen max_targets targets.
    struct Cuts {
        uint64_t counted = 0, cut = 0;  // counted targets looked at; those of them cut from their beginning
        bool all = true;                // every window was looked at
    };
    Cuts cuts(int32_t doc_end, uint64_t max_targets) const;
    // Whether some target has loss weight 0: prompt/completion data, not plain text.
    bool masked() const;
    // This rank's windows in one pass of next_in_epoch (the last round may be partial).
    size_t windows_per_epoch() const {
        return windows_.size() > (size_t)rank_ ? (windows_.size() - rank_ + world_ - 1) / world_ : 0;
    }
    int B() const { return B_; }
    size_t num_tokens() const;
    // What a user should hear about the shards, a line each, for the tools to print: one shorter than one window
    // of T+1 tokens (served as one padded window), one made for another vocabulary than the model's.
    const std::vector<std::string>& shard_notes() const { return shard_notes_; }
    // Prints them on stderr as notes, each once per process (the same file may feed several loaders).
    void note_shards() const;
    LoaderState state() const { return state_; }
    void set_state(const LoaderState& s);

   private:
    // A window is T inputs from `start` and the T targets after them. The windows of a shard step by T, and
    // when the last of them stops short of the shard's end one more window ends exactly there; it overlaps
    // the one before, so its first `skip` targets, already counted there, get weight 0. Every target of a
    // shard is then counted exactly once an epoch: with a small fine-tuning set, the tail is not noise.
    // A document window holds whole documents, `len` targets (<= T), and the row is padded after them.
    struct Window {
        uint32_t shard;
        uint32_t skip;
        uint32_t len;  // targets in the window: T, but fewer in a short shard's or a document window
        uint64_t start;
    };
    std::vector<uint32_t> epoch_order(uint64_t epoch) const;
    void start_epoch();
    void fill_row(Batch& b, int row, const Window& w) const;

    std::vector<Shard> shards_;
    std::vector<Window> windows_;
    std::vector<uint32_t> order_;       // this epoch's visiting order
    std::vector<uint32_t> next_order_;  // the next epoch's, once a round reaches into it (else empty)
    std::vector<std::string> shard_notes_;
    int B_, T_;
    int vocab_;  // token ids must stay below it (0: unchecked), also in a file changed since it was read
    int32_t doc_end_;
    bool isolate_;  // windows == Windows::isolated: batches carry positions
    uint64_t long_documents_ = 0;
    bool shuffle_;
    uint64_t seed_;
    int rank_, world_;
    LoaderState state_;
};

}  // namespace tune
