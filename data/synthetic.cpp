#include "data/synthetic.h"

#include <algorithm>
#include <set>

#include "model/rng.h"

namespace tune {

namespace {

// Every word here is a single GPT-2 token with its leading space, so the task is about order, not spelling.
const char* const kAdjectives[] = {"red", "blue", "green", "small", "big", "old", "young", "happy", "quiet", "fast"};
const char* const kNouns[] = {"cat", "dog", "fox", "bird", "fish", "horse", "cow", "pig", "sheep", "duck"};
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
    // 10 x 10 adjective pairs x 10 animals x 3 places = 3000 distinct prompts.
    const size_t total = std::min(train + test, (size_t)3000);
    Rng r(seed);
    std::set<std::string> seen;
    train_out.clear();
    test_out.clear();
    while (train_out.size() + test_out.size() < total) {
        std::vector<std::string> w = {pick(kAdjectives, r), pick(kAdjectives, r)};
        const std::string animal = pick(kNouns, r);
        w.insert(w.begin() + (long)r.below(3), animal);
        TaskExample ex{"Which word is an animal? " + w[0] + " " + w[1] + " " + w[2] + "\nAnswer:", " " + animal};
        if (!seen.insert(ex.prompt).second) continue;
        (test_out.size() < test ? test_out : train_out).push_back(ex);
    }
}

}  // namespace tune
