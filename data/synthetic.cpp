#include "data/synthetic.h"

#include <algorithm>
#include <array>

#include "model/rng.h"

namespace tune {

namespace {

// Every word here is a single GPT-2 token with its leading space, so the task is about order, not spelling.
const char* const kAdjectives[] = {"red", "blue", "green", "small", "big", "old", "young", "happy", "quiet", "fast"};
const char* const kNouns[] = {"cat", "dog", "fox", "bird", "fish", "horse", "tree", "house", "car", "boat"};
const char* const kVerbs[] = {"sees", "likes", "finds", "follows", "watches", "hears", "wants", "helps"};
const char* const kPlaces[] = {"park", "river", "garden", "city", "forest", "field", "road", "hill"};

template <size_t N>
const char* pick(const char* const (&a)[N], Rng& r) {
    return a[r.below(N)];
}

}  // namespace

std::string synthetic_corpus(uint64_t seed, size_t sentences) {
    Rng r(seed);
    std::string out;
    for (size_t i = 0; i < sentences; i++) {
        switch (r.below(3)) {
            case 0:
                out += std::string("The ") + pick(kAdjectives, r) + " " + pick(kNouns, r) + " " + pick(kVerbs, r) +
                       " the " + pick(kAdjectives, r) + " " + pick(kNouns, r) + ".";
                break;
            case 1:
                out += std::string("A ") + pick(kNouns, r) + " lives near the " + pick(kPlaces, r) + ".";
                break;
            default:
                out += std::string("In the ") + pick(kPlaces, r) + ", the " + pick(kNouns, r) + " is " +
                       pick(kAdjectives, r) + ".";
        }
        out += i % 5 == 4 ? "\n" : " ";
    }
    return out;
}

void synthetic_task(uint64_t seed, size_t train, size_t test, std::vector<TaskExample>& train_out,
                    std::vector<TaskExample>& test_out) {
    // The word pool: adjectives and nouns together (20 words, 6840 ordered triples of distinct words).
    std::vector<std::string> words;
    for (const char* w : kAdjectives) words.push_back(w);
    for (const char* w : kNouns) words.push_back(w);
    std::vector<std::array<int, 3>> triples;
    for (int a = 0; a < (int)words.size(); a++)
        for (int b = 0; b < (int)words.size(); b++)
            for (int c = 0; c < (int)words.size(); c++)
                if (a != b && b != c && a != c) triples.push_back({a, b, c});
    Rng r(seed);
    for (size_t i = triples.size() - 1; i > 0; i--) std::swap(triples[i], triples[r.below(i + 1)]);
    train = std::min(train, triples.size() - std::min(test, triples.size()));
    auto make = [&](const std::array<int, 3>& t) {
        return TaskExample{"Reverse: " + words[t[0]] + " " + words[t[1]] + " " + words[t[2]] + "\nAnswer:",
                           " " + words[t[2]] + " " + words[t[1]] + " " + words[t[0]]};
    };
    train_out.clear();
    test_out.clear();
    for (size_t i = 0; i < test && i < triples.size(); i++) test_out.push_back(make(triples[i]));
    for (size_t i = 0; i < train; i++) train_out.push_back(make(triples[test_out.size() + i]));
}

}  // namespace tune
