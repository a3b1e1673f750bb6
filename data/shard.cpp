#include "data/shard.h"

#include <cstdint>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <set>

#include "data/fileio.h"
#include "kernels/common.h"

namespace tune {

const char* windows_name(Windows w) {
    return w == Windows::fixed       ? "fixed"
           : w == Windows::documents ? "documents"
           : w == Windows::single    ? "single"
                                     : "isolated";
}

bool windows_from_name(const std::string& v, Windows* w) {
    for (Windows k : {Windows::fixed, Windows::documents, Windows::single, Windows::isolated})
        if (v == windows_name(k)) {
            *w = k;
            return true;
        }
    return false;
}

Windows parse_windows(const std::string& v) {
    Windows w;
    if (!windows_from_name(v, &w))
        throw UsageError("--windows: expected fixed, documents, single or isolated, got '" + v + "'");
    return w;
}

bool parse_windows_flag(const std::string& v, Windows* w) {
    if (v == "auto") return true;
    if (!windows_from_name(v, w))
        throw UsageError("--windows: expected auto, fixed, documents, single or isolated, got '" + v + "'");
    return false;
}

constexpr size_t kShardHeader = 32;

// The 32-byte header of data/shard.h's layout, in one place for both writers.
static void store_shard_header(uint8_t* h, uint32_t width, uint64_t n, bool has_mask, uint32_t vocab_size) {
    std::memcpy(h, kShardMagic, 8);
    store_u32(&h[8], kShardVersion);
    store_u32(&h[12], width);
    store_u64(&h[16], n);
    store_u32(&h[24], has_mask ? 1 : 0);
    store_u32(&h[28], vocab_size);
}

void write_shard(const std::string& path, const std::vector<int32_t>& tokens, const std::vector<uint8_t>* mask,
                 uint32_t vocab_size) {
    if (mask && mask->size() != tokens.size()) throw Error(path + ": mask length differs from token count");
    bool narrow = std::all_of(tokens.begin(), tokens.end(), [](int32_t t) { return t >= 0 && t < 65536; });
    const uint32_t width = narrow ? 2 : 4;
    std::vector<uint8_t> out(kShardHeader + tokens.size() * width + (mask ? tokens.size() : 0));
    store_shard_header(out.data(), width, tokens.size(), mask != nullptr, vocab_size);
    uint8_t* p = out.data() + kShardHeader;
    for (int32_t t : tokens) {
        for (uint32_t i = 0; i < width; i++) *p++ = (uint8_t)((uint32_t)t >> (8 * i));
    }
    if (mask) std::memcpy(p, mask->data(), mask->size());
    write_file_atomic(path, out.data(), out.size());
}

ShardWriter::ShardWriter(const std::string& path, uint32_t vocab_size)
    : file_(std::make_unique<AtomicFile>(path)), vocab_(vocab_size), width_(vocab_size <= 65536 ? 2 : 4) {
    mask_ = anonymous_scratch_file(directory_of(path), path);
    uint8_t header[kShardHeader] = {};
    file_->write(header, sizeof header);  // filled in by finish(), when the count is known
}

ShardWriter::~ShardWriter() {
    if (mask_) std::fclose(mask_);
}

void ShardWriter::append(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& mask) {
    if (mask.size() != tokens.size()) throw Error(file_->path() + ": mask length differs from token count");
    packed_.resize(tokens.size() * width_);
    uint8_t* p = packed_.data();
    for (int32_t t : tokens) {
        if (t < 0 || (uint32_t)t >= vocab_)
            throw Error(file_->path() + ": token id " + std::to_string(t) + " outside the vocabulary of " +
                        std::to_string(vocab_));
        for (uint32_t i = 0; i < width_; i++) *p++ = (uint8_t)((uint32_t)t >> (8 * i));
    }
    file_->write(packed_.data(), packed_.size());
    if (!mask.empty() && std::fwrite(mask.data(), 1, mask.size(), mask_) != mask.size())
        throw Error(file_->path() + ": writing the scratch copy of the loss mask failed (" + std::strerror(errno) + ")");
    n_ += tokens.size();
}

void ShardWriter::seal() {
    if (sealed_) return;
    if (std::fflush(mask_) != 0)
        throw Error(file_->path() + ": writing the scratch copy of the loss mask failed (" + std::strerror(errno) + ")");
    std::rewind(mask_);
    std::vector<uint8_t> block(1 << 20);
    for (uint64_t left = n_; left > 0;) {
        const size_t want = (size_t)std::min<uint64_t>(left, block.size());
        if (std::fread(block.data(), 1, want, mask_) != want)
            throw Error(file_->path() + ": reading back the scratch copy of the loss mask failed");
        file_->write(block.data(), want);
        left -= want;
    }
    uint8_t header[kShardHeader];
    store_shard_header(header, width_, n_, true, vocab_);
    file_->write_at(0, header, sizeof header);
    file_->sync();
    sealed_ = true;
}

void ShardWriter::commit() {
    seal();
    file_->commit();
}

std::vector<int32_t> Shard::tokens() const {
    std::vector<int32_t> t(n);
    for (size_t i = 0; i < n; i++) t[i] = token(i);
    return t;
}

std::vector<uint8_t> Shard::mask_vector() const {
    return mask_bytes ? std::vector<uint8_t>(mask_bytes, mask_bytes + n) : std::vector<uint8_t>();
}

Shard read_shard(const std::string& path, int vocab_size) {
    auto file = std::make_shared<const MappedFile>(path);
    const uint8_t* b = file->data();
    const size_t size = file->size();
    if (size < kShardHeader)
        throw Error(path + ": not a token shard (" + std::to_string(size) + " bytes, the header alone is 32)");
    if (std::memcmp(b, kShardMagic, 8) != 0)
        throw Error(path + ": not a token shard (magic is not TUNETOK1; make shards with bin/prepare)");
    const uint32_t version = load_u32(&b[8]), width = load_u32(&b[12]), has_mask = load_u32(&b[24]),
                   made_for = load_u32(&b[28]);
    const uint64_t n = load_u64(&b[16]);
    if (version != kShardVersion)
        throw Error(path + ": shard version " + std::to_string(version) + ", this build reads version " +
                    std::to_string(kShardVersion));
    if (width != 2 && width != 4) throw Error(path + ": token width " + std::to_string(width) + ", expected 2 or 4");
    if (has_mask > 1) throw Error(path + ": has_mask field is " + std::to_string(has_mask) + ", expected 0 or 1");
    const uint64_t body = size - kShardHeader, per_token = width + has_mask;
    if (n > body / per_token || n * per_token != body)
        throw Error(path + ": header says " + std::to_string(n) + " tokens (" + std::to_string(n * per_token) +
                    " bytes) but the file holds " + std::to_string(body) + " bytes after the header");
    Shard s;
    s.path = path;
    s.n = n;
    s.width = width;
    s.vocab = made_for;
    s.token_bytes = b + kShardHeader;
    s.mask_bytes = has_mask ? s.token_bytes + n * width : nullptr;
    s.file = std::move(file);
    // Every id is checked once here: the model indexes its embedding with them. Without a vocabulary, a 4-byte
    // id must still be an int32 (token() returns one): 2^31 and above would come out negative.
    if (vocab_size > 0 || width == 4) {
        const uint64_t limit = vocab_size > 0 ? (uint64_t)vocab_size : uint64_t(1) << 31;
        for (uint64_t i = 0; i < n; i++)
            if ((uint32_t)s.token(i) >= limit)
                throw Error(path + ": token " + std::to_string(i) + " has id " + std::to_string((uint32_t)s.token(i)) +
                            (vocab_size > 0 ? ", not below the vocabulary size " + std::to_string(vocab_size)
                                            : ", beyond any vocabulary (ids are below 2^31)") +
                            (vocab_size > 0 && made_for > 0 && made_for != (uint32_t)vocab_size
                                 ? " (the shard was made for a vocabulary of " + std::to_string(made_for) + ")"
                                 : ""));
    }
    if (s.mask_bytes)  // a weight of 7 would count a token seven times
        for (uint64_t i = 0; i < n; i++) {
            if (s.mask_bytes[i] > 1)
                throw Error(path + ": the loss mask of token " + std::to_string(i) + " is " +
                            std::to_string(s.mask_bytes[i]) + ", expected 0 or 1");
            s.masked_targets += i > 0 && s.mask_bytes[i] == 0;
        }
    return s;
}

std::vector<Shard> read_shards(const std::vector<std::string>& paths, int vocab_size) {
    if (paths.empty()) throw Error("no data shards given");
    std::vector<Shard> shards;
    for (const std::string& p : paths) {
        shards.push_back(read_shard(p, vocab_size));
        const Shard& s = shards.back();
        if (s.size() < 2)
            throw Error(p + ": " + std::to_string(s.size()) + " token" + (s.size() == 1 ? "" : "s") +
                        ", so nothing to predict (a shard needs at least 2)");
        // A mask with no 1 would train on nothing and report a loss of 0: a broken preparation, not data. The
        // first token is never a target (nothing comes before it), so its weight counts for nothing either.
        if (s.has_mask() && s.masked_targets == s.n - 1)
            throw Error(p + ": the loss mask is 0 at every one of the " + std::to_string(s.n - 1) +
                        " tokens that are predicted (all but the first of its " + std::to_string(s.n) +
                        "): no token would count (were the answers left out when it was prepared?)");
    }
    return shards;
}

bool any_masked(const std::vector<Shard>& shards) {
    return std::any_of(shards.begin(), shards.end(), [](const Shard& s) { return s.masked_targets > 0; });
}

Loader::Loader(std::vector<Shard> shards, int vocab_size, int B, int T, bool shuffle, uint64_t seed, int rank,
               int world_size, int32_t doc_end, Windows windows)
    : shards_(std::move(shards)), B_(B), T_(T), vocab_(vocab_size), doc_end_(doc_end),
      isolate_(windows == Windows::isolated), shuffle_(shuffle), seed_(seed), rank_(rank), world_(world_size) {
    if (shards_.empty()) throw Error("no data shards given");
    if (isolate_ && doc_end < 0) throw Error("Loader: isolated documents need the token that ends a document");
    const bool one_document = windows == Windows::single;
    for (uint32_t shard = 0; shard < (uint32_t)shards_.size(); shard++) {
        const Shard& s = shards_[shard];
        const std::string& p = s.path;
        const uint64_t n = s.size();
        // Ids below the model's vocabulary, but made for another one: other tokens, perhaps. (GPT-2's tokens on a
        // model that added some after them, a pad token, say, are the model's own.)
        constexpr uint32_t kGpt2Vocab = 50257;
        if (s.vocab > 0 && vocab_size > 0 && s.vocab != (uint32_t)vocab_size &&
            !(s.vocab == kGpt2Vocab && (uint32_t)vocab_size > kGpt2Vocab))
            shard_notes_.push_back(p + ": made for a vocabulary of " + std::to_string(s.vocab) + " tokens, and the "
                                   "model has " + std::to_string(vocab_size) + ": the same ids mean other tokens if "
                                   "its tokenizer is not the model's (bin/prepare with GPT-2's writes 50257)");
        if (doc_end >= 0) {
            // TEACH: document windows. Each window starts at the end of a document (its <|endoftext|>, the token
            // GPT-2 was trained to begin text after) or at the shard's start, and takes as many whole documents
            // after it as fit in its T targets; the rest of the row is padding that counts nothing. A fine-tuning
            // example then never loses its prompt to the window before, at the price of the padding. A document
            // longer than a window is cut into windows of T (those after the first start mid-document, as fixed
            // windows do). Every target is in exactly one window. With --windows single a window
            // ends at its first document end instead of its last: the attention of every position then holds
            // its own document only, as it will when the model is asked one prompt at a time.
            const uint64_t last = n - 1;  // the last target
            for (uint64_t w = 0; w < last;) {
                const uint64_t reach = std::min(w + (uint64_t)T, last);  // the furthest target this window can hold
                uint64_t to = 0;  // the window's last target: the end of its last (or first) whole document
                if (one_document) {
                    for (uint64_t j = w + 1; j <= reach && !to; j++)
                        if (s.token(j) == doc_end) to = j;
                } else if (reach != last) {
                    for (uint64_t j = reach; j > w && !to; j--)
                        if (s.token(j) == doc_end) to = j;
                }
                if (!to) {
                    to = reach;  // the shard's end, or no document end within reach: a long document, cut
                    if (reach != last && (w == 0 || s.token(w) == doc_end))
                        long_documents_++;  // counted at its first window
                }
                windows_.push_back({shard, 0, (uint32_t)(to - w), w});
                w = to;
            }
            continue;
        }
        if (n < (uint64_t)T + 1) {  // one window, padded past the shard's end (fill_row)
            windows_.push_back({shard, 0, (uint32_t)(n - 1), 0});
            shard_notes_.push_back(p + ": " + std::to_string(n) + " tokens, shorter than one window of T+1 = " +
                                    std::to_string(T + 1) + ": one window, padded (the padding counts nothing)");
            continue;
        }
        uint64_t start = 0;
        for (; start + T + 1 <= n; start += T) windows_.push_back({shard, 0, (uint32_t)T, start});
        const uint64_t counted_to = start;  // targets 1 .. start are in the windows so far
        if (counted_to < n - 1)
            windows_.push_back({shard, (uint32_t)(counted_to - (n - T - 1)), (uint32_t)T, n - T - 1});
    }
    if (windows_.size() > UINT32_MAX)  // the epoch orders hold 32-bit window numbers
        throw Error("the training data has " + std::to_string(windows_.size()) + " windows of T+1 tokens, more than " +
                    "the 2^32 one loader counts: give a longer --seq or fewer shards");
    start_epoch();
}

void Loader::note_shards() const {
    static std::set<std::string> said;
    for (const std::string& line : shard_notes_)
        if (said.insert(line).second) std::fprintf(stderr, "note: %s\n", line.c_str());
}

Loader::Cuts Loader::cuts(int32_t doc_end, uint64_t max_targets) const {
    Cuts c;
    uint64_t seen = 0;
    for (const Window& w : windows_) {
        if (seen >= max_targets) {
            c.all = false;
            break;
        }
        const Shard& s = shards_[w.shard];
        // The window's inputs are tokens start .. start+len-1. Its first target's document began before them
        // unless the window starts the shard or follows a document end; a document end among the inputs
        // starts a whole document. Only a document that one window could hold counts: document windows cut
        // the longer ones too.
        bool cut = w.start > 0 && s.token(w.start - 1) != doc_end;
        if (cut) {
            const uint64_t T = (uint64_t)T_, last = s.size() - 1;
            uint64_t from = w.start - 1;  // back to the end before the document (or the shard's start)
            while (from > 0 && s.token(from) != doc_end && w.start - from <= T) from--;
            uint64_t end = w.start;  // on to the document's own end (or the shard's)
            while (end < last && s.token(end) != doc_end && end - from <= T) end++;
            // A document window from `from` would hold targets from+1 .. end.
            cut = (from == 0 || s.token(from) == doc_end) && (end == last || s.token(end) == doc_end) &&
                  end - from <= T;
        }
        for (uint64_t j = w.start + 1; j <= w.start + w.len; j++) {
            if (s.token(j - 1) == doc_end) cut = false;
            if (j <= w.start + w.skip) continue;  // the window before holds this target
            seen++;
            if (s.mask(j) == 0) continue;
            c.counted++;
            c.cut += cut;
        }
    }
    return c;
}

bool Loader::masked() const { return any_masked(shards_); }

double Loader::filled() const {
    uint64_t targets = 0;
    for (const Window& w : windows_) targets += w.len - w.skip;
    return windows_.empty() ? 0.0 : (double)targets / ((double)windows_.size() * T_);
}

size_t Loader::num_tokens() const {
    size_t n = 0;
    for (const Shard& s : shards_) n += s.size();
    return n;
}

std::vector<uint32_t> Loader::epoch_order(uint64_t epoch) const {
    std::vector<uint32_t> order(windows_.size());
    std::iota(order.begin(), order.end(), 0u);
    if (!shuffle_) return order;
    // Fisher-Yates with our own generator: the order depends only on (seed, epoch).
    Rng rng(seed_ ^ (0x5851F42D4C957F2Dull * (epoch + 1)));
    for (size_t i = order.size() - 1; i > 0; i--) std::swap(order[i], order[rng.below(i + 1)]);
    return order;
}

void Loader::start_epoch() {
    order_ = epoch_order(state_.epoch);
    next_order_.clear();
}

void Loader::set_state(const LoaderState& s) {
    state_ = s;
    if (!windows_.empty()) {  // an epoch's end, as next() leaves it: the next epoch's start
        state_.epoch += state_.cursor / windows_.size();
        state_.cursor %= windows_.size();
    }
    start_epoch();
}

void Loader::fill_row(Batch& b, int row, const Window& w) const {
    const Shard& s = shards_[w.shard];
    for (int t = 0; t < T_; t++) {
        size_t i = (size_t)row * T_ + t;
        if (t >= (int)w.len) {
            // TEACH: a window with fewer than T targets (a shard shorter than a window, a document window) is
            // padded: token 0 in and out with weight 0. Attention is causal, so positions after the real ones
            // change nothing before them, and weight 0 keeps them out of the loss and every gradient.
            b.inputs[i] = t == (int)w.len ? s.token(w.start + t) : 0;
            b.targets[i] = 0;
            b.weights[i] = 0.0f;
            continue;
        }
        b.inputs[i] = s.token(w.start + t);
        b.targets[i] = s.token(w.start + t + 1);
        b.weights[i] = t < (int)w.skip ? 0.0f : (float)s.mask(w.start + t + 1);
    }
    if (isolate_) {
        // TEACH: isolated documents. A document begins at the <|endoftext|> before it (the token it is asked
        // after, as in a window of its own) or at the row's start; positions count from there, and the model
        // lets each token attend to its own document only (GPT2::forward's positions). The padding counts on.
        int32_t* pos = b.positions.data() + (size_t)row * T_;
        for (int t = 0; t < T_; t++) {
            const int32_t in = b.inputs[(size_t)row * T_ + t];
            pos[t] = t == 0 || (t <= (int)w.len && in == doc_end_) ? 0 : pos[t - 1] + 1;
        }
    }
    // read_shard checked every id and mask value, but a file rewritten in place since then (same length or
    // longer: shorter ends in read_file's SIGBUS message) would index past the embedding table.
    for (int t = 0; t <= std::min(T_, (int)w.len); t++) {
        const uint64_t at = w.start + t;
        if (vocab_ > 0 && (uint32_t)s.token(at) >= (uint32_t)vocab_)
            throw Error(s.path + ": token " + std::to_string(at) + " is now " + std::to_string(s.token(at)) +
                        ", not below the vocabulary size " + std::to_string(vocab_) +
                        ": the file was rewritten in place while it was being read (replace shards by renaming new "
                        "ones over them)");
        if (t > 0 && s.mask(at) > 1)
            throw Error(s.path + ": the loss mask of token " + std::to_string(at) + " is now " +
                        std::to_string(s.mask(at)) + ": the file was rewritten in place while it was being read");
    }
}

Batch Loader::next() {
    Batch b;
    b.B = B_;
    b.T = T_;
    b.inputs.resize((size_t)B_ * T_);
    b.targets.resize(b.inputs.size());
    b.weights.resize(b.inputs.size());
    b.positions.resize(isolate_ ? b.inputs.size() : 0);
    // TEACH: the epochs' orders, joined end to end, are one stream, and each round of world_ windows takes the
    // next world_ of it, rank r the r-th: a round at an epoch's end runs on into the next epoch's order. So which
    // windows a step reads depends on the global batch only, not on how many ranks share it (a run resumed on
    // another number of ranks reads what it would have), and no epoch drops its last windows.
    const uint64_t per_round = (uint64_t)world_, n = order_.size();
    if (n < per_round)
        throw Error("the training data has " + std::to_string(n) + " windows of T+1 tokens, fewer than the " +
                    std::to_string(world_) + " ranks: every rank needs one a step");
    for (int row = 0; row < B_; row++) {
        const uint64_t pos = state_.cursor + rank_;
        if (pos >= n && next_order_.empty()) next_order_ = epoch_order(state_.epoch + 1);
        fill_row(b, row, windows_[pos < n ? order_[pos] : next_order_[pos - n]]);
        state_.cursor += per_round;
        if (state_.cursor >= n) {
            state_.epoch++;
            state_.cursor -= n;
            order_ = next_order_.empty() ? epoch_order(state_.epoch) : std::move(next_order_);
            next_order_.clear();
        }
    }
    return b;
}

bool Loader::next_in_epoch(Batch& b) {
    // Rounds of world_ windows, rank r taking the r-th of each; the last round may be partial, and the ranks past
    // its end take none: across the ranks, one pass counts every window once.
    const uint64_t per_round = (uint64_t)world_;
    std::vector<uint64_t> mine;  // positions in this epoch's order
    while ((int)mine.size() < B_ && state_.cursor < order_.size()) {
        if (state_.cursor + rank_ < order_.size()) mine.push_back(state_.cursor + rank_);
        state_.cursor += per_round;
    }
    if (mine.empty()) return false;
    const int rows = (int)mine.size();
    b.B = rows;
    b.T = T_;
    b.inputs.resize((size_t)rows * T_);
    b.targets.resize(b.inputs.size());
    b.weights.resize(b.inputs.size());
    b.positions.resize(isolate_ ? b.inputs.size() : 0);
    for (int row = 0; row < rows; row++) fill_row(b, row, windows_[order_[mine[row]]]);
    return true;
}

}  // namespace tune
