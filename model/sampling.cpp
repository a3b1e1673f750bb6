#include "model/sampling.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>

#include "kernels/common.h"

namespace tune {

// idx[0..n) in the order (logit descending, id ascending), as std::sort with that comparison would leave them, by
// an LSD radix sort of 64-bit keys: the logit's bits mapped so that a larger logit is a smaller number, then the
// id. A high-entropy nucleus holds tens of thousands of tokens, which a comparison sort through the index took
// milliseconds to order, longer than a GPU forward. No NaN may be among them.
static void sort_by_logit(std::vector<int32_t>& idx, int n, const std::vector<float>& logits) {
    std::vector<uint64_t> key(n), tmp(n);
    for (int i = 0; i < n; i++) {
        const float v = logits[idx[i]] + 0.0f;  // -0 becomes +0: the two compare equal
        uint32_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        const uint32_t ascending = bits & 0x80000000u ? ~bits : bits | 0x80000000u;  // float order as unsigned
        key[i] = (uint64_t)~ascending << 32 | (uint32_t)idx[i];
    }
    for (int shift = 0; shift < 64; shift += 8) {
        size_t count[257] = {0};
        for (int i = 0; i < n; i++) count[(key[i] >> shift & 0xff) + 1]++;
        if (count[(key[0] >> shift & 0xff) + 1] == (size_t)n) continue;  // one digit for all: nothing moves
        for (int d = 0; d < 256; d++) count[d + 1] += count[d];
        for (int i = 0; i < n; i++) tmp[count[key[i] >> shift & 0xff]++] = key[i];
        key.swap(tmp);
    }
    for (int i = 0; i < n; i++) idx[i] = (int32_t)(uint32_t)key[i];
}

int32_t sample_token(const std::vector<float>& logits, int V, const SamplingConfig& cfg, Rng& rng) {
    // A NaN, or +inf (whose weight exp(inf - inf) is NaN): either has no place in the order.
    int32_t best = 0;
    float top = logits[0];  // in a register: comparing against logits[best] made the scan 4x slower
    bool bad = false;
    for (int32_t i = 0; i < V; i++) {
        const float v = logits[i];
        bad |= !(v < std::numeric_limits<float>::infinity());
        if (v > top) top = v, best = i;
    }
    if (bad) {
        const auto at = std::find_if(logits.begin(), logits.begin() + V,
                                     [](float x) { return !(x < std::numeric_limits<float>::infinity()); });
        throw Error("the logits hold " + std::string(std::isnan(*at) ? "NaN" : "+inf") + " at token id " +
                    std::to_string(at - logits.begin()) + ": the model's forward pass overflowed (weights too "
                    "large for float arithmetic, or damaged)");
    }
    if (top == -std::numeric_limits<float>::infinity())  // every weight exp(-inf - -inf) would be NaN
        throw Error("every logit is -inf: no token can be drawn");
    if (cfg.temperature <= 0) return best;
    const int k = cfg.top_k > 0 ? std::min(cfg.top_k, V) : V;
    if (k == V && cfg.top_p >= 1.0f) {  // every token a candidate: one pass in id order, nothing to sort
        std::vector<double> p(V);
        double sum = 0;
        for (int i = 0; i < V; i++) sum += p[i] = std::exp((logits[i] - logits[best]) / cfg.temperature);
        double r = rng.uniform() * sum;
        for (int i = 0; i < V; i++) {
            r -= p[i];
            if (r < 0) return i;
        }
        return best;  // rounding left r at 0 or above: the most likely token
    }
    // Candidates sorted by logit, most likely first: the top k, or (top-p over the whole vocabulary) only the
    // tokens above a weight threshold, lowered until they hold the nucleus: a trained model's nucleus is a few
    // hundred of the 50257 tokens, and sorting them all for every token would cost more than the forward.
    std::vector<int32_t> idx(V);
    std::iota(idx.begin(), idx.end(), 0);
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    const double maxv = logits[best];
    int n = k;
    double sum = 0;  // the candidates' weight, the nucleus' reference
    std::vector<double> w;
    if (k < V) {
        std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), by_logit);
    } else {
        w.resize(V);
        for (int32_t i = 0; i < V; i++) sum += w[i] = std::exp((logits[i] - maxv) / cfg.temperature);
        // Weight is monotonic in the logit, so the tokens at or above a threshold are the head of the sorted order.
        // The threshold: the highest power of two whose tokens hold the nucleus, from one pass that sums the
        // weights by their binary exponent (w in (0, 1]: bucket b holds [2^-b, 2^(1-b)); the last, the rest down to
        // 0). The margin keeps the nucleus inside whatever the order of the sums; past 1, everything is taken.
        std::vector<double> by_exponent(1024, 0.0);
        for (int32_t i = 0; i < V; i++) {
            uint64_t bits;
            std::memcpy(&bits, &w[i], sizeof bits);
            by_exponent[1023 - std::min<uint64_t>(bits >> 52, 1023)] += w[i];
        }
        const double need = cfg.top_p * sum * (1 + 1e-6);
        int b = 0;
        for (double mass = 0; b < 1023 && (mass += by_exponent[b]) < need;) b++;
        const double t = b < 1023 ? std::ldexp(1.0, -b) : 0.0;
        n = (int)(std::partition(idx.begin(), idx.end(), [&](int32_t i) { return w[i] >= t; }) - idx.begin());
        sort_by_logit(idx, n, logits);
    }
    idx.resize(n);
    std::vector<double> p(n);
    for (int i = 0; i < n; i++) {
        p[i] = w.empty() ? std::exp((logits[idx[i]] - maxv) / cfg.temperature) : w[idx[i]];
        if (w.empty()) sum += p[i];  // top-k: the k candidates' weight
    }
    // Nucleus: cut the tail once the kept mass reaches top_p.
    int keep = n;
    if (cfg.top_p < 1.0f) {
        double mass = 0;
        for (int i = 0; i < n; i++) {
            mass += p[i] / sum;
            if (mass >= cfg.top_p) {
                keep = i + 1;
                break;
            }
        }
    }
    double kept = 0;
    for (int i = 0; i < keep; i++) kept += p[i];
    double r = rng.uniform() * kept;
    for (int i = 0; i < keep; i++) {
        r -= p[i];
        if (r < 0) return idx[i];
    }
    return idx[keep - 1];
}

void check_token_ids(const std::vector<int32_t>& ids, int V, const std::string& what) {
    for (size_t i = 0; i < ids.size(); i++)
        if (ids[i] < 0 || ids[i] >= V)
            throw Error(what + " token " + std::to_string(i) + " has id " + std::to_string(ids[i]) +
                        ", not below the model's vocabulary size " + std::to_string(V) +
                        " (a model trained with another tokenizer than --vocab's?)");
}

void check_prompt(const GPT2& model, const std::vector<int32_t>& prompt) {
    // No "generate:" prefix: the tools print "NAME: error: " before the message themselves.
    if (prompt.empty()) throw Error("the prompt is empty (give at least one token)");
    check_token_ids(prompt, model.config().vocab_size, "prompt");
    if ((int)prompt.size() > model.max_T()) {
        const int P = model.virtual_tokens();
        throw Error("the prompt has " + std::to_string(prompt.size()) + " tokens, more than the model's context of " +
                    std::to_string(model.max_T()) + " positions" +
                    (P ? " (block size " + std::to_string(model.config().block_size) + " less " + std::to_string(P) +
                             " virtual tokens)"
                       : "") +
                    ": shorten the prompt");
    }
}

std::vector<int32_t> generate(GPT2& model, const std::vector<int32_t>& prompt, int max_new, const SamplingConfig& cfg,
                              Rng& rng, int32_t stop_token, const std::function<void(int32_t)>& on_token,
                              GenerateStop* stopped) {
    const int maxT = model.max_positions();  // virtual tokens, if any, take the first positions
    check_prompt(model, prompt);
    std::vector<int32_t> out;
    GenerateStop why = GenerateStop::max_new;
    model.forward_cached(prompt.data(), 1, (int)prompt.size(), 0, true);  // prefill: the whole prompt at once
    int pos = (int)prompt.size();
    std::vector<float> logits = model.logits_row(0, pos - 1);
    const int V = cfg.vocab > 0 ? std::min(cfg.vocab, model.config().vocab_size) : model.config().vocab_size;
    while ((int)out.size() < max_new) {
        int32_t next = sample_token(logits, V, cfg, rng);
        if (next == stop_token) {
            why = GenerateStop::stop_token;
            break;
        }
        out.push_back(next);
        if (on_token) on_token(next);
        if ((int)out.size() == max_new) break;
        if (pos >= maxT) {  // no position left to feed `next` back in
            why = GenerateStop::context_full;
            break;
        }
        model.forward_cached(&next, 1, 1, pos);
        pos++;
        logits = model.logits_row(0, 0);
    }
    if (stopped) *stopped = why;
    return out;
}

}  // namespace tune
