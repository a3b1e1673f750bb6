// Tests of the GPT-2 tokenizer (data/tokenizer.h).
//
// The ids are checked against Hugging Face `tokenizers` (scripts/reference_tokenize.py, built from the
// same data/gpt2 files) on a few MB of text nobody here wrote (licenses, package docs, C headers,
// translated tutorials found on the machine) and on generated edge cases (every kind of Unicode
// character, contractions, whitespace runs, digits, long words). Bytes that are not UTF-8, which the
// reference cannot take, are checked against the documented byte-level rule instead. Tests that
// need the reference skip, saying how to install it, when python3 or `tokenizers` is missing.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "data/tokenizer.h"
#include "kernels/common.h"

namespace fs = std::filesystem;

namespace {

const tune::Tokenizer& gpt2() {
    static const tune::Tokenizer tok = tune::Tokenizer::load("data/gpt2");
    return tok;
}

std::string read_file(const fs::path& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_file(const fs::path& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary);
    f << bytes;
    ASSERT_TRUE(f.good()) << "cannot write " << path;
}

// A fresh directory under the system temp dir, removed at the end of the test.
struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& tag) {
        path = fs::temp_directory_path() / ("tune_test_tokenizer_" + tag + "_" + std::to_string(getpid()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// Runs a shell command; returns its exit status and (if `out` is given) its standard output.
int run(const std::string& cmd, std::string* out = nullptr) {
    FILE* p = popen(cmd.c_str(), "r");
    if (p == nullptr) return -1;
    std::string text;
    char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, got);
    int status = pclose(p);
    if (out) *out = std::move(text);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool reference_available() {
    static const bool ok = run("python3 -c 'import tokenizers' >/dev/null 2>&1") == 0;
    return ok;
}

#define SKIP_WITHOUT_REFERENCE()                                                                       \
    if (!reference_available())                                                                        \
    GTEST_SKIP() << "needs python3 with Hugging Face tokenizers for reference ids: pip install tokenizers"

// Reference ids for each file, or nullopt for a file that is not valid UTF-8 (the reference only
// takes text). Fails the test if the script does not answer one line per file.
std::vector<std::optional<std::vector<int32_t>>> reference_ids(const std::vector<std::string>& files) {
    std::string cmd = "python3 scripts/reference_tokenize.py --vocab data/gpt2";
    for (const std::string& f : files) cmd += " " + shell_quote(f);
    std::string out;
    int rc = run(cmd, &out);
    std::vector<std::optional<std::vector<int32_t>>> all;
    EXPECT_EQ(rc, 0) << "reference script failed: " << cmd.substr(0, 200);
    std::istringstream lines(out);
    std::string line;
    while (std::getline(lines, line)) {
        if (line == "INVALID_UTF8") {
            all.emplace_back(std::nullopt);
            continue;
        }
        std::vector<int32_t> ids;
        std::istringstream nums(line);
        for (int32_t id; nums >> id;) ids.push_back(id);
        all.emplace_back(std::move(ids));
    }
    EXPECT_EQ(all.size(), files.size()) << "reference script printed the wrong number of lines";
    all.resize(files.size());
    return all;
}

// Bytes shown readably in a failure message: printable ASCII as is, everything else as \xNN.
std::string escaped(const std::string& s) {
    std::string out;
    char buf[8];
    for (unsigned char c : s) {
        if (c >= 0x20 && c < 0x7F && c != '\\') {
            out += static_cast<char>(c);
        } else {
            std::snprintf(buf, sizeof buf, "\\x%02X", c);
            out += buf;
        }
    }
    return out;
}

std::string ids_around(const std::vector<int32_t>& ids, size_t at) {
    std::string s;
    size_t lo = at >= 4 ? at - 4 : 0;
    for (size_t i = lo; i < std::min(ids.size(), at + 6); ++i)
        s += (i == at ? "[" : "") + std::to_string(ids[i]) + (i == at ? "] " : " ");
    return s;
}

// Compares every id; on a mismatch names the first differing position, both ids around it, and the
// text (from the expected ids) there.
::testing::AssertionResult same_ids(const std::vector<int32_t>& want, const std::vector<int32_t>& got,
                                    const std::string& what) {
    size_t i = 0;
    while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
    if (i == want.size() && i == got.size()) return ::testing::AssertionSuccess();
    size_t lo = i >= 4 ? i - 4 : 0;
    std::string text = gpt2().decode(want.data() + lo, std::min(want.size(), i + 6) - lo);
    return ::testing::AssertionFailure()
           << what << ": first difference at id #" << i << " (expected " << want.size() << " ids, got "
           << got.size() << ")\n  expected: " << ids_around(want, i) << "\n  got:      " << ids_around(got, i)
           << "\n  text there: \"" << escaped(text) << "\"";
}

// Text files found on any Debian machine with the CI packages (and more where present), sorted, each
// group capped so the whole comes to a few MB. Nobody here wrote them.
std::vector<std::string> real_text_files() {
    struct Group {
        std::vector<fs::path> roots;
        bool recursive;
        bool (*wanted)(const fs::path&);
        size_t budget;
    };
    auto any = [](const fs::path&) { return true; };
    auto copyright = [](const fs::path& p) { return p.filename() == "copyright"; };
    auto doc_text = [](const fs::path& p) {
        std::string e = p.extension().string();
        return p.filename() != "copyright" && e != ".gz" && e != ".xz" && e != ".bz2" && e != ".png" && e != ".jpg";
    };
    auto header = [](const fs::path& p) { return p.extension() == ".h"; };
    auto translated = [](const fs::path& p) {
        std::string n = p.filename().string();
        return n.find(".utf-8") != std::string::npos || n.rfind("help.", 0) == 0;
    };
    const std::vector<Group> groups = {
        {{"/usr/share/common-licenses"}, false, any, 400000},
        {{"/usr/share/doc"}, true, copyright, 1200000},
        {{"/usr/share/doc"}, true, doc_text, 600000},
        {{"/usr/include"}, false, header, 800000},
        {{"/usr/share/vim/vim90/tutor", "/usr/share/gnupg"}, false, translated, 500000},
    };
    std::vector<std::string> files;
    for (const Group& g : groups) {
        std::vector<fs::path> found;
        for (const fs::path& root : g.roots) {
            std::error_code ec;
            if (!fs::is_directory(root, ec)) continue;
            auto consider = [&](const fs::directory_entry& e) {
                std::error_code ec2;
                if (e.is_symlink(ec2) || !e.is_regular_file(ec2)) return;
                uintmax_t size = e.file_size(ec2);
                if (ec2 || size == 0 || size > 200000 || !g.wanted(e.path())) return;
                found.push_back(e.path());
            };
            if (g.recursive) {
                for (fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
                     it != end; it.increment(ec))
                    consider(*it);
            } else {
                for (fs::directory_iterator it(root, ec), end; it != end; it.increment(ec)) consider(*it);
            }
        }
        std::sort(found.begin(), found.end());
        size_t used = 0;
        for (const fs::path& p : found) {
            uintmax_t size = fs::file_size(p);
            if (used + size > g.budget) continue;
            used += size;
            files.push_back(p.string());
        }
    }
    return files;
}

void append_utf8(std::string& s, uint32_t cp) {
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

std::string utf8(uint32_t cp) {
    std::string s;
    append_utf8(s, cp);
    return s;
}

std::string repeat(const std::string& s, int n) {
    std::string out;
    for (int i = 0; i < n; ++i) out += s;
    return out;
}

// Generated texts that probe one behaviour each, as (file name, bytes); all valid UTF-8.
std::vector<std::pair<std::string, std::string>> edge_case_texts() {
    std::vector<std::pair<std::string, std::string>> t;

    // Each code point between letters, between digits, between punctuation, after a space, and
    // before a newline: a disagreement about \p{L}, \p{N} or \s changes where a piece ends. All of
    // the BMP; the other planes sampled.
    std::string cps;
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp += cp < 0x10000 ? 1 : cp < 0x20000 ? 3 : 257) {
        if (cp >= 0xD800 && cp < 0xE000) continue;
        std::string c = utf8(cp);
        cps += "a" + c + "a1" + c + "1." + c + ". " + c + c + "\n";
    }
    t.emplace_back("every_code_point.txt", cps);

    t.emplace_back("contractions.txt",
                   "I'm he's they're we've you'll I'd don't can't won't. It'S I'M THEY'RE 'tis ''s ' s "
                   "'s's 'll've x'd' rock'n'roll ’s (curly) o'clock 'Twas 'S'T'RE'VE'M'LL'D\n"
                   "He said 'hello' and 'bye'. '''triple''' \"double's\" 1's 2'd ''\n");

    std::string ws;
    const char* units[] = {" ", "\n", "\t", "\r\n", " \n", "\n ", "\u00A0", "\u3000", "\u2028", "\u0085", "\u180E", "\v\f"};
    for (const char* u : units)
        for (int n : {1, 2, 3, 7, 16, 33})
            ws += "x" + repeat(u, n) + "y" + repeat(u, n) + "1" + repeat(u, n) + "." + repeat(u, n);
    ws += repeat(" ", 500) + "end" + repeat("\n", 300) + repeat(" \t", 200) + "\n\n\n   ";
    t.emplace_back("whitespace.txt", ws);

    t.emplace_back("digits.txt",
                   "0 1 12 123 1234 12345 123456 3.14159 2,718 1e-9 0x1F 1_000_000 -42 +7 99% $12.50 " +
                       repeat("1234567890", 40) +
                       " \uFF11\uFF12\uFF13 \u0663\u0664 \u2167\u216B \u00B2\u00B3 \u2460\u2461 \u0967\u0968 "
                       "v1.2.3-rc4 2024-01-31T12:34:56Z a1b2c3 ١٢٣٤\n");

    t.emplace_back("scripts.txt",
                   "Ελληνικά ρήματα; Русский язык — великий. Українська мова! ქართული ენა. Հայերեն "
                   "עִבְרִית כתובה מימין לשמאל. العربية لغة جميلة، أليس كذلك؟ हिन्दी भाषा। বাংলা ভাষা ਪੰਜਾਬੀ "
                   "தமிழ் മലയാളം ภาษาไทยไม่มีช่องว่าง ພາສາລາວ ཇོང་ཁ 中文没有空格，日本語はかなと漢字。한국어 문장입니다. "
                   "ᠮᠣᠩᠭᠣᠯ ᠪᠢᠴᠢᠭ ትግርኛ ᏣᎳᎩ ᐃᓄᒃᑎᑐᑦ 𐌰𐍄𐍄𐌰 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 e\u0301e\u0301 n\u0303 Å\n");

    t.emplace_back("emoji.txt",
                   "🙂🙃 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪🇯🇵 ❤️ ☃ ✓✗ 🤖:) <3 ¯\\_(ツ)_/¯ ( ͡° ͜ʖ ͡°) 🀄🃏 "
                   "\u200B\u200C\u200D\uFEFF zero\u200Bwidth 𝟘𝟙𝟚\n");

    t.emplace_back("special_text.txt",
                   "<|endoftext|> a<|endoftext|>b\n<|endoftext|><|endoftext|> < |endoftext| > <|endoftext|\n");

    // Pieces far longer than any token: one word of 20,000 bytes goes through the long-piece merge.
    std::string long_words = repeat("a", 20000) + " " + repeat("ab", 5000) + " " + repeat("=", 7000) + " " +
                             repeat("-_", 3000) + " " + repeat("1", 9000) + " " + repeat("é", 4000) + " " +
                             repeat("ありがとう", 800) + "\n";
    std::mt19937 rng(7);
    for (int i = 0; i < 3000; ++i) long_words += static_cast<char>('a' + rng() % 26);
    long_words += " ";
    for (int i = 0; i < 3000; ++i) long_words += "!#$%&*+/<=>?@^|~"[rng() % 16];
    t.emplace_back("long_words.txt", long_words);

    // Random mixtures of characters from every class the pattern tells apart.
    const std::vector<std::string> alphabet = {
        "a", "Z", "é", "ß", "ж", "中", "ア", "🙂", "0", "7", "٣", "Ⅻ", "²", " ", "  ", "\n", "\t", "\r",
        "\u00A0", "\u3000", "'", "'s", "'t", "'re", "'ll", "'d", "'m", "'ve", ".", ",", "!", "\"", "-",
        "_", "(", ")", "{", "}", "<|endoftext|>", "\u0301", "\u200D", "\u180E", "\x01", "\x7F"};
    std::string mix;
    for (int i = 0; i < 60000; ++i) mix += alphabet[rng() % alphabet.size()];
    t.emplace_back("random_mix.txt", mix);
    return t;
}

// The documented rule for bytes that are not UTF-8: each is its one-byte token, and each valid run
// between them encodes as if it were a whole text. Checked piece by piece against encode() itself.
std::vector<int32_t> encode_by_rule(const std::vector<std::string>& valid_runs, const std::vector<std::string>& bad) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < valid_runs.size(); ++i) {
        std::vector<int32_t> run = gpt2().encode(valid_runs[i]);
        ids.insert(ids.end(), run.begin(), run.end());
        if (i < bad.size())
            for (unsigned char c : bad[i]) ids.push_back(gpt2().encode(std::string(1, static_cast<char>(c)))[0]);
    }
    return ids;
}

}  // namespace

TEST(Tokenizer, VocabularyHas50257TokensAndEndOfTextIs50256) {
    EXPECT_EQ(gpt2().vocab_size(), 50257);
    EXPECT_EQ(gpt2().eot_token(), 50256);
    EXPECT_EQ(gpt2().decode({50256}), "<|endoftext|>");
    EXPECT_EQ(gpt2().token_bytes(220), " ");
    EXPECT_EQ(gpt2().token_bytes(198), "\n");
    EXPECT_EQ(gpt2().token_bytes(15496), "Hello");
}

// Expected ids printed by scripts/reference_tokenize.py (Hugging Face tokenizers 0.23).
TEST(Tokenizer, EncodesKnownStringsLikeTheReference) {
    struct Case {
        std::string text;
        std::vector<int32_t> ids;
    };
    const std::vector<Case> cases = {
        {"", {}},
        {"Hello world", {15496, 995}},
        {"I'm he's they're we've you'll I'd don't",
         {40, 1101, 339, 338, 484, 821, 356, 1053, 345, 1183, 314, 1549, 836, 470}},
        {"'S 'LL ''s", {6, 50, 705, 3069, 10148, 82}},
        {"  \n\n  x   ", {220, 220, 628, 220, 2124, 220, 220, 220}},
        {"          x", {220, 220, 220, 220, 220, 220, 220, 220, 220, 2124}},
        {"line1\r\nline2\r\n\tindent", {1370, 16, 201, 198, 1370, 17, 201, 198, 197, 521, 298}},
        {"12345 3.14", {10163, 2231, 513, 13, 1415}},
        {"こんにちは世界 🙂 Привет",
         {46036, 22174, 28618, 2515, 94, 31676, 10310, 244, 45911, 234, 32485, 12466, 253, 21169, 18849, 38857,
          16843, 20375}},
        {"a \u180Eb", {64, 28053, 254, 236, 65}},  // U+180E is not whitespace (PCRE2's \s says it is)
        {"café", {66, 1878, 2634}},
    };
    for (const Case& c : cases) EXPECT_TRUE(same_ids(c.ids, gpt2().encode(c.text), "\"" + escaped(c.text) + "\""));
}

TEST(Tokenizer, EndOfTextInsideTextIsOrdinaryText) {
    EXPECT_TRUE(same_ids({27, 91, 437, 1659, 5239, 91, 29}, gpt2().encode("<|endoftext|>"), "<|endoftext|>"));
    EXPECT_TRUE(same_ids({64, 27, 91, 437, 1659, 5239, 91, 29, 65}, gpt2().encode("a<|endoftext|>b"), "a<|endoftext|>b"));
}

// Byte tokens: 0xFF -> 187, 0xC3 -> 127, 0xE3 -> 159, 0x81 -> 223, ... (the reference's ids for
// the stand-in characters of those bytes).
TEST(Tokenizer, EachInvalidUtf8ByteBecomesItsByteToken) {
    struct Case {
        std::string text;
        std::vector<int32_t> ids;
    };
    const std::vector<Case> cases = {
        {"a\xFF" "b", {64, 187, 65}},
        {"caf\xC3", {66, 1878, 127}},                       // truncated "é" at the end
        {"\xE3\x81 hello", {159, 223, 23748}},              // truncated 3-byte character
        {"\xC0\xAF", {124, 107}},                            // overlong encoding of '/'
        {"\xED\xA0\x80", {169, 254, 222}},                   // UTF-16 surrogate
        {"\xF4\x90\x80\x80", {176, 238, 222, 222}},          // above U+10FFFF
        {"Hello \xFF world", {15496, 220, 187, 995}},        // the space before the bad byte ends its run
        {"x\x80\x80y", {87, 222, 222, 88}},                  // lone continuation bytes
    };
    for (const Case& c : cases) EXPECT_TRUE(same_ids(c.ids, gpt2().encode(c.text), "\"" + escaped(c.text) + "\""));
}

TEST(Tokenizer, ValidRunsBetweenInvalidBytesEncodeAsIfAlone) {
    std::mt19937 rng(11);
    const std::vector<std::string> valid = {"Hello", " world", "  ", "\n\n", "it's", " 42", "中文", "🙂", "x ", "'",
                                            " ", "é", "\t"};
    const std::vector<std::string> bad = {"\xFF", "\x80", "\xC3", "\xE3\x81", "\xF0\x9F", "\xED\xA0\x80", "\xC0\xAF"};
    for (int trial = 0; trial < 500; ++trial) {
        std::vector<std::string> runs, gaps;
        std::string text;
        int n = 1 + static_cast<int>(rng() % 5);
        for (int i = 0; i < n; ++i) {
            std::string run;
            // Never empty: two bad pieces side by side can make a valid character ("\xC3" "\x80").
            for (int k = 1 + static_cast<int>(rng() % 3); k > 0; --k) run += valid[rng() % valid.size()];
            runs.push_back(run);
            text += run;
            if (i + 1 < n) {
                gaps.push_back(bad[rng() % bad.size()]);
                text += gaps.back();
            }
        }
        ASSERT_TRUE(same_ids(encode_by_rule(runs, gaps), gpt2().encode(text), "\"" + escaped(text) + "\""));
        ASSERT_EQ(gpt2().decode(gpt2().encode(text)), text);
    }
}

TEST(Tokenizer, DecodeOfEncodeIsIdentityOnRandomBytes) {
    std::mt19937 rng(12345);
    const std::string ascii_soup = " \n\t'sdlmtvre0123456789.,!?-_aAbBzZ";
    for (int trial = 0; trial < 3000; ++trial) {
        size_t len = rng() % 300;
        std::string text;
        for (size_t i = 0; i < len; ++i) {
            switch (trial % 3) {
                case 0: text += static_cast<char>(rng() & 0xFF); break;                          // any bytes
                case 1: text += ascii_soup[rng() % ascii_soup.size()]; break;                     // word-like
                default: {  // valid UTF-8: any scalar value, half of them from the BMP
                    uint32_t cp = rng() % 2 ? rng() % 0xF800 : rng() % 0x10F800;
                    append_utf8(text, cp >= 0xD800 ? cp + 0x800 : cp);
                }
            }
        }
        ASSERT_EQ(gpt2().decode(gpt2().encode(text)), text) << "\"" << escaped(text) << "\"";
    }
    std::string big(1 << 20, '\0');
    for (char& c : big) c = static_cast<char>(rng() & 0xFF);
    EXPECT_EQ(gpt2().decode(gpt2().encode(big)), big);
}

TEST(Tokenizer, HugeRunsOfOneCharacterEncodeAndRoundTrip) {
    for (const char* unit : {"a", "=", " ", "\n", "7", "é", "\xFF"}) {
        std::string text = repeat(unit, 1 << 18);
        std::vector<int32_t> ids = gpt2().encode(text);
        EXPECT_LT(ids.size(), text.size() + 1) << "unit \"" << escaped(unit) << "\"";
        EXPECT_EQ(gpt2().decode(ids), text) << "unit \"" << escaped(unit) << "\"";
    }
}

TEST(Tokenizer, DecodeRejectsIdsOutOfRange) {
    for (int32_t bad : {-1, 50257, 1 << 30}) {
        try {
            gpt2().decode({15496, bad});
            ADD_FAILURE() << "decode accepted id " << bad;
        } catch (const tune::Error& e) {
            EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
        }
    }
    EXPECT_THROW(gpt2().token_bytes(50257), tune::Error);
}

TEST(Tokenizer, EncodeFromManyThreadsAgreesWithOneThread) {
    std::vector<std::string> texts;
    for (const std::string& f : real_text_files()) {
        texts.push_back(read_file(f));
        if (texts.size() == 200) break;
    }
    for (const auto& [name, text] : edge_case_texts())
        if (text.size() < 300000) texts.push_back(text);

    const tune::Tokenizer single = tune::Tokenizer::load("data/gpt2");
    std::vector<std::vector<int32_t>> want;
    for (const std::string& t : texts) want.push_back(single.encode(t));

    const tune::Tokenizer shared = tune::Tokenizer::load("data/gpt2");  // cold cache, filled concurrently
    constexpr int kThreads = 8;
    std::vector<int> mismatches(kThreads, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (size_t k = 0; k < texts.size(); ++k) {
                size_t i = (k * 7 + t * texts.size() / kThreads) % texts.size();  // threads start apart
                if (shared.encode(texts[i]) != want[i]) ++mismatches[t];
            }
        });
    }
    for (std::thread& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST(TokenizerReference, MatchesHuggingFaceOnRealTextFiles) {
    SKIP_WITHOUT_REFERENCE();
    std::vector<std::string> files = real_text_files();
    auto ref = reference_ids(files);
    size_t compared_bytes = 0, compared_files = 0;
    for (size_t i = 0; i < files.size(); ++i) {
        std::string text = read_file(files[i]);
        std::vector<int32_t> got = gpt2().encode(text);
        EXPECT_EQ(gpt2().decode(got), text) << files[i];
        if (!ref[i]) continue;  // not UTF-8: the reference has no answer
        EXPECT_TRUE(same_ids(*ref[i], got, files[i]));
        compared_bytes += text.size();
        ++compared_files;
    }
    std::printf("[          ] compared %zu files, %.2f MB of real text, id by id\n", compared_files,
                compared_bytes / 1e6);
    EXPECT_GE(compared_bytes, size_t{1000000}) << "too little real text found to compare; looked under "
                                                  "/usr/share/common-licenses, /usr/share/doc, /usr/include";
}

TEST(TokenizerReference, MatchesHuggingFaceOnGeneratedEdgeCases) {
    SKIP_WITHOUT_REFERENCE();
    TempDir dir("edge");
    std::vector<std::string> files;
    auto texts = edge_case_texts();
    for (const auto& [name, text] : texts) {
        files.push_back((dir.path / name).string());
        write_file(files.back(), text);
    }
    auto ref = reference_ids(files);
    for (size_t i = 0; i < files.size(); ++i) {
        ASSERT_TRUE(ref[i].has_value()) << texts[i].first << " should be valid UTF-8";
        std::vector<int32_t> got = gpt2().encode(texts[i].second);
        EXPECT_TRUE(same_ids(*ref[i], got, texts[i].first));
        EXPECT_EQ(gpt2().decode(got), texts[i].second) << texts[i].first;
    }
}

namespace {

// Loads from a copy of data/gpt2 in which one file has been changed; returns the error message.
std::string load_error(const std::string& file, const std::string& contents, bool remove = false) {
    TempDir dir("vocab");
    fs::copy_file("data/gpt2/encoder.json", dir.path / "encoder.json");
    fs::copy_file("data/gpt2/vocab.bpe", dir.path / "vocab.bpe");
    if (remove)
        fs::remove(dir.path / file);
    else
        write_file(dir.path / file, contents);
    try {
        tune::Tokenizer::load(dir.path.string());
    } catch (const tune::Error& e) {
        return e.what();
    }
    return "(no error)";
}

// The offset just past the n-th '\n' of s (s.size() when it has fewer).
size_t nth_line_end(const std::string& s, size_t n) {
    size_t at = 0;
    for (size_t i = 0; i < n && at < s.size(); i++) {
        const size_t nl = s.find('\n', at);
        at = nl == std::string::npos ? s.size() : nl + 1;
    }
    return at;
}

std::string replaced(std::string s, const std::string& from, const std::string& to) {
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << "fixture text \"" << from << "\" not found";
    return at == std::string::npos ? s : s.replace(at, from.size(), to);
}

}  // namespace

TEST(Tokenizer, BadVocabularyFilesAreReportedWithFileAndProblem) {
    const std::string encoder = read_file("data/gpt2/encoder.json");
    const std::string merges = read_file("data/gpt2/vocab.bpe");
    struct Case {
        std::string file, contents;
        bool remove;
        std::vector<std::string> expect;  // substrings the message must contain
    };
    const std::vector<Case> cases = {
        {"encoder.json", "", true, {"encoder.json", "cannot open"}},
        {"vocab.bpe", "", true, {"vocab.bpe", "cannot open"}},
        {"encoder.json", "{\"a\": 0, ", false, {"encoder.json", "not valid JSON"}},
        {"encoder.json", "[1, 2]", false, {"encoder.json", "JSON object"}},
        {"encoder.json", replaced(encoder, "\"<|endoftext|>\": 50256", "\"<|endoftext|>\": \"x\""), false,
         {"encoder.json", "<|endoftext|>", "integer"}},
        {"encoder.json", replaced(encoder, "\"!\": 0", "\"!\": 1"), false, {"encoder.json", "id 1"}},
        {"encoder.json", replaced(encoder, "\"<|endoftext|>\": 50256", "\"<|endoftext|>\": 50257"), false,
         {"encoder.json", "50257", "outside"}},
        // Above INT64_MAX an id parses unsigned: named as written, not wrapped to -1.
        {"encoder.json",
         replaced(encoder, "\"<|endoftext|>\": 50256", "\"<|endoftext|>\": 18446744073709551615"), false,
         {"encoder.json", "id 18446744073709551615 is outside"}},
        {"encoder.json", replaced(encoder, "\"!\": 0", "\"\\u4e2d\": 0"), false, {"encoder.json", "stand-in"}},
        {"vocab.bpe", "", false, {"vocab.bpe", "empty"}},
        {"vocab.bpe", replaced(merges, "\u0120 t\n", "\u0120t\n"), false, {"vocab.bpe", "line 2", "two tokens"}},
        {"vocab.bpe", replaced(merges, "\u0120 a\n", "\u0120 zzqqxx\n"), false,
         {"vocab.bpe", "line 3", "\"zzqqxx\" is not in encoder.json"}},
        {"vocab.bpe", replaced(merges, "\u0120 a\n", "\u0120 t\n"), false, {"vocab.bpe", "line 3", "repeats"}},
        // Cut at a line's end: every line is valid, but tokens of encoder.json are made by none of them (it
        // loaded, and "Hello world" came out as 4 tokens instead of 2). The version line is not a merge.
        {"vocab.bpe", merges.substr(0, nth_line_end(merges, 1000)), false,
         {"vocab.bpe", "49001 of encoder.json's tokens are made by no merge here", "it has 999 merges", "cut short"}},
        {"vocab.bpe", merges.substr(0, nth_line_end(merges, 50000)), false,
         {"vocab.bpe", "1 of encoder.json's tokens are made by no merge here (the first, id 50255:"}},
    };
    for (const Case& c : cases) {
        std::string msg = load_error(c.file, c.contents, c.remove);
        for (const std::string& part : c.expect)
            EXPECT_NE(msg.find(part), std::string::npos) << "message \"" << msg << "\" lacks \"" << part << "\"";
        EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << "the JSON library's name in: " << msg;
    }
}

// The bin/tokenize tool (`make test` builds it first).
TEST(Tokenizer, TokenizeToolEncodesDecodesAndReportsBadInput) {
    ASSERT_EQ(access("bin/tokenize", X_OK), 0) << "bin/tokenize not built: make test builds it first";
    TempDir dir("tool");
    const std::string text = "Hello world\n\xFF it's 2024 \xE4\xB8\xAD\n";
    const fs::path in = dir.path / "in.txt", ids = dir.path / "ids.txt", err = dir.path / "err.txt";
    write_file(in, text);
    const std::string q_in = shell_quote(in.string()), q_ids = shell_quote(ids.string());
    const std::string q_err = " 2>" + shell_quote(err.string());

    std::string out;
    ASSERT_EQ(run("bin/tokenize " + q_in + " >" + q_ids), 0);
    std::string expected;
    for (int32_t id : gpt2().encode(text)) expected += (expected.empty() ? "" : " ") + std::to_string(id);
    EXPECT_EQ(read_file(ids), expected + "\n");
    ASSERT_EQ(run("bin/tokenize --decode " + q_ids, &out), 0);
    EXPECT_EQ(out, text);
    ASSERT_EQ(run("bin/tokenize - < " + q_in + " | bin/tokenize --decode", &out), 0);
    EXPECT_EQ(out, text);
    ASSERT_EQ(run("printf '15496\\n995' | bin/tokenize --decode --vocab data/gpt2", &out), 0);
    EXPECT_EQ(out, "Hello world");
    ASSERT_EQ(run("printf '15496\\n995' | bin/tokenize --decode -- -", &out), 0);
    EXPECT_EQ(out, "Hello world");

    struct Bad {
        std::string cmd;
        int status;
        std::string message;
    };
    const std::vector<Bad> bad = {
        {"bin/tokenize --frobnicate", 2, "unknown option"},
        {"bin/tokenize /nonexistent/file.txt", 2, "/nonexistent/file.txt"},
        {"bin/tokenize a b", 2, "one input file"},
        {"bin/tokenize --vocab", 2, "--vocab"},
        // Options are read in order, as by the other tools: one they do not know, before --help, is refused.
        {"bin/tokenize --bogus --help", 2, "unknown option '--bogus'"},
        {"echo '15496 hello' | bin/tokenize --decode", 1, "id #2 \"hello\" is not an integer"},
        {"echo '15496 50257' | bin/tokenize --decode", 1, "\"50257\" is out of range"},
        // A binary file (a shard) is shown escaped, not cut at its first NUL.
        {"printf 'TUNETOK1\\001\\000\\000' | bin/tokenize --decode", 1,
         "id #1 \"TUNETOK1\\x01\\x00\\x00\" is not an integer"},
        {"echo '-3' | bin/tokenize --decode", 1, "out of range"},
        {"echo hi | bin/tokenize --vocab /nonexistent", 2, "--vocab: no such directory: /nonexistent"},
        {"bin/tokenize ''", 2, "the input file is '' (an unset variable?)"},
        {"bin/tokenize -- -h", 2, "cannot open input file '-h'"},  // after --, a file of that name
    };
    for (const Bad& b : bad) {
        EXPECT_EQ(run(b.cmd + " >/dev/null" + q_err), b.status) << b.cmd;
        std::string msg = read_file(err);
        EXPECT_NE(msg.find(b.message), std::string::npos) << b.cmd << " said: " << msg;
        EXPECT_EQ(std::count(msg.begin(), msg.end(), '\n'), 1) << b.cmd << " said: " << msg;
    }
    for (const char* help : {"bin/tokenize --help", "bin/tokenize -h", "bin/tokenize --decode --help --bogus"}) {
        ASSERT_EQ(run(std::string(help), &out), 0) << help;
        EXPECT_NE(out.find("--decode"), std::string::npos) << help;
    }
}
