// Token shards and the loader: round trips, one error per malformed field, deterministic shuffling,
// disjoint data across ranks, and a saved position that continues exactly.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>

#include <map>
#include <set>
#include <thread>

#include "data/fileio.h"
#include "data/shard.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;

std::vector<int32_t> iota_tokens(size_t n, int32_t mod) {
    std::vector<int32_t> t(n);
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)(i % mod);
    return t;
}

TEST(Shard, RoundTripWithMaskAnd16BitTokens) {
    TempDir tmp("shard");
    const std::string d = tmp.path();
    auto t = iota_tokens(1000, 50257);
    std::vector<uint8_t> m(t.size());
    for (size_t i = 0; i < m.size(); i++) m[i] = i % 3 == 0;
    write_shard(d + "/a.bin", t, &m, 50257);
    Shard s = read_shard(d + "/a.bin", 50257);
    EXPECT_EQ(s.tokens(), t);
    EXPECT_EQ(s.mask_vector(), m);
    EXPECT_EQ(slurp(d + "/a.bin").size(), 32 + 2 * t.size() + t.size());
}

// A shard stays memory-mapped: its copies share the mapping and outlive the first, and a shard that comes
// through a pipe (no file to map) is read into memory instead, with the same tokens.
TEST(Shard, MappedShardOutlivesItsFirstCopyAndPipesAreRead) {
    TempDir tmp("shard");
    const std::string d = tmp.path();
    auto t = iota_tokens(5000, 50257);
    std::vector<uint8_t> m(t.size());
    for (size_t i = 0; i < m.size(); i++) m[i] = (uint8_t)(i % 5 != 0);
    write_shard(d + "/a.bin", t, &m, 50257);
    Shard kept;
    {
        Shard first = read_shard(d + "/a.bin", 50257);
        kept = first;
    }
    EXPECT_EQ(kept.tokens(), t);
    EXPECT_EQ(kept.mask_vector(), m);
    EXPECT_EQ(kept.token(4999), t[4999]);
    EXPECT_EQ(kept.mask(5), 0);
    ASSERT_EQ(::mkfifo((d + "/pipe").c_str(), 0600), 0);
    const std::string bytes = slurp(d + "/a.bin");
    std::thread writer([&] { spit(d + "/pipe", bytes); });
    const Shard piped = read_shard(d + "/pipe", 50257);
    writer.join();
    EXPECT_EQ(piped.tokens(), t);
    EXPECT_EQ(piped.mask_vector(), m);
}

TEST(Shard, WideTokensUse32Bits) {
    TempDir tmp("shard");
    const std::string d = tmp.path();
    std::vector<int32_t> t = {1, 70000, 5};
    write_shard(d + "/a.bin", t, nullptr, 0);
    EXPECT_EQ(read_shard(d + "/a.bin", 0).tokens(), t);
    EXPECT_EQ(slurp(d + "/a.bin").size(), 32u + 12u);
    // An id of 2^31 or more is no int32: refused even without a vocabulary to check against (found by fuzzing).
    std::string b = slurp(d + "/a.bin");
    b[32 + 4 + 3] = '\x80';  // the second id becomes 70000 + 2^31
    spit(d + "/b.bin", b);
    EXPECT_THAT(error_of([&] { read_shard(d + "/b.bin", 0); }),
                HasSubstr("token 1 has id 2147553648, beyond any vocabulary (ids are below 2^31)"));
}

TEST(Shard, EachMalformedFieldHasItsError) {
    TempDir tmp("shard");
    const std::string d = tmp.path();
    write_shard(d + "/a.bin", iota_tokens(100, 50), nullptr, 50);
    const std::string good = slurp(d + "/a.bin");
    auto err = [&](std::string b, int vocab = 50) {
        spit(d + "/b.bin", b);
        return error_of([&] { read_shard(d + "/b.bin", vocab); });
    };
    std::string b = good;
    b[3] = 'X';
    EXPECT_THAT(err(b), HasSubstr("magic"));
    b = good;
    store_u32(reinterpret_cast<uint8_t*>(&b[8]), 9);
    EXPECT_THAT(err(b), HasSubstr("shard version 9"));
    b = good;
    store_u32(reinterpret_cast<uint8_t*>(&b[12]), 3);
    EXPECT_THAT(err(b), HasSubstr("token width 3"));
    b = good;
    store_u32(reinterpret_cast<uint8_t*>(&b[24]), 2);
    EXPECT_THAT(err(b), HasSubstr("has_mask"));
    EXPECT_THAT(err(good.substr(0, good.size() - 1)), HasSubstr("header says 100 tokens"));
    EXPECT_THAT(err(good + "x"), HasSubstr("header says 100 tokens"));
    EXPECT_THAT(err(good.substr(0, 20)), HasSubstr("not a token shard"));
    EXPECT_THAT(err(good, 49), HasSubstr("id 49, not below the vocabulary size 49"));
    EXPECT_THAT(err(good, 49), HasSubstr("b.bin"));
    EXPECT_EQ(err(good), "");
    std::vector<uint8_t> mask(100, 1);
    write_shard(d + "/m.bin", iota_tokens(100, 50), &mask, 50);
    std::string m = slurp(d + "/m.bin");
    m[m.size() - 100 + 42] = 7;  // the mask follows the tokens: token 42's weight would count it seven times
    EXPECT_THAT(err(m), HasSubstr("the loss mask of token 42 is 7, expected 0 or 1"));
}

// A mapped file cut short in place (as `> file` does) faults on its next read past the new end: the process
// ends with status 1 naming the file, not with "Bus error". A file replaced by rename, as every writer here
// does, is not cut: the mapping keeps the old file. (Each death test's child runs the test from its start and
// exits without destructors: it removes its own directory.)
TEST(FileIoDeathTest, AMappedFileTruncatedWhileReadIsNamed) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    TempDir tmp("sigbus");
    const std::string p = tmp.file("shard.bin");
    const std::vector<uint8_t> bytes(1 << 20, 7);
    write_file_atomic(p, bytes.data(), bytes.size());
    EXPECT_EXIT(
        {
            MappedFile m(p);
            if (::truncate(p.c_str(), 0) != 0) std::_Exit(3);
            std::filesystem::remove_all(tmp.path());  // the mapping keeps the (now empty) file
            volatile uint8_t last = m.data()[bytes.size() - 1];
            (void)last;
            std::_Exit(4);  // not reached: the read faults
        },
        ::testing::ExitedWithCode(1), "error: .*shard\\.bin was cut short \\(truncated, or rewritten in place\\) "
                                      "while it was being read");
    MappedFile kept(p);
    const std::vector<uint8_t> other(100, 9);
    write_file_atomic(p, other.data(), other.size());
    EXPECT_EQ(kept.data()[bytes.size() - 1], 7) << "the mapping holds the file it opened";
    // A sent SIGBUS (no fault address) still takes the default action (a signal, not exit status 1).
    EXPECT_EXIT(
        {
            std::filesystem::remove_all(tmp.path());
            ::raise(SIGBUS);
        },
        ::testing::KilledBySignal(SIGBUS), "");
}

// Every reader goes through read_file_bytes: a directory is named as one (it used to throw
// std::bad_alloc from tellg()), and a pipe, whose size is unknown, is read to its end.
TEST(FileIo, DirectoryIsNamedAndPipesAreReadWhole) {
    TempDir tmp("fileio");
    const std::string d = tmp.path();
    EXPECT_EQ(error_of([&] { read_file_bytes(d); }), d + ": is a directory, not a file");
    EXPECT_EQ(error_of([&] { read_shard(d, 50); }), d + ": is a directory, not a file");
    EXPECT_THAT(error_of([&] { read_file_bytes(d + "/none"); }), HasSubstr(d + "/none: cannot open (No such file"));
    spit(d + "/f", std::string(100000, 'x') + "end");
    std::vector<uint8_t> b = read_file_bytes(d + "/f");
    EXPECT_EQ(std::string(b.begin(), b.end()), std::string(100000, 'x') + "end");
    spit(d + "/empty", "");
    EXPECT_TRUE(read_file_bytes(d + "/empty").empty());
    ASSERT_EQ(::mkfifo((d + "/pipe").c_str(), 0600), 0);
    std::thread writer([&] { spit(d + "/pipe", std::string(70000, 'p')); });  // opens once the reader does
    const std::vector<uint8_t> piped = read_file_bytes(d + "/pipe");
    writer.join();
    EXPECT_EQ(std::string(piped.begin(), piped.end()), std::string(70000, 'p'));
    // The head of a file: a probe, then as many bytes in all as the probe says (fewer at the end of the file),
    // and the whole size; a pipe's too.
    size_t total = 0;
    spit(d + "/h", "7abcdefghij");
    auto by_digit = [](const std::vector<uint8_t>& b) { return (size_t)(b[0] - '0'); };
    std::vector<uint8_t> h = read_file_head(d + "/h", 1, by_digit, &total);
    EXPECT_EQ(std::string(h.begin(), h.end()), "7abcdef");
    EXPECT_EQ(total, 11u);
    spit(d + "/short", "9ab");
    h = read_file_head(d + "/short", 1, by_digit, &total);
    EXPECT_EQ(std::string(h.begin(), h.end()), "9ab");
    h = read_file_head(d + "/empty", 1, by_digit, &total);
    EXPECT_TRUE(h.empty());
    EXPECT_EQ(total, 0u);
    EXPECT_EQ(error_of([&] { read_file_head(d, 1, by_digit, &total); }), d + ": is a directory, not a file");
    std::thread again([&] { spit(d + "/pipe", "3" + std::string(70000, 'q')); });
    h = read_file_head(d + "/pipe", 1, by_digit, &total);
    again.join();
    EXPECT_EQ(std::string(h.begin(), h.end()), "3qq");
    EXPECT_EQ(total, 70001u);
}

// The line reader of bin/prepare: lines across its 1 MiB buffer, a last line without '\n', CRLF kept as
// data (JSON ignores the \r), empty lines, a pipe, and read_file_bytes' errors.
TEST(FileIo, LineReaderSplitsAnySizeAndNamesBadPaths) {
    TempDir tmp("fileio");
    const std::string d = tmp.path();
    const std::string longline(3 << 20, 'L');  // three buffers' worth
    spit(d + "/f", "a\n\nb\r\n" + longline + "\nlast");
    std::vector<std::string> got;
    LineReader r(d + "/f");
    for (std::string line; r.next(line);) got.push_back(line);
    EXPECT_EQ(got, (std::vector<std::string>{"a", "", "b\r", longline, "last"}));
    EXPECT_EQ(r.bytes_read(), 6 + longline.size() + 1 + 4);  // "a\n", "\n", "b\r\n", the long line, "last"
    spit(d + "/nl", "x\n");
    LineReader one(d + "/nl");
    std::string line;
    EXPECT_TRUE(one.next(line));
    EXPECT_EQ(line, "x");
    EXPECT_FALSE(one.next(line)) << "a final newline is not an extra empty line";
    EXPECT_EQ(error_of([&] { LineReader x(d); }), d + ": is a directory, not a file");
    EXPECT_THAT(error_of([&] { LineReader x(d + "/none"); }), HasSubstr(d + "/none: cannot open (No such file"));
    ASSERT_EQ(::mkfifo((d + "/pipe").c_str(), 0600), 0);
    std::thread writer([&] { spit(d + "/pipe", "p1\np2"); });
    LineReader p(d + "/pipe");
    std::vector<std::string> piped;
    for (std::string l; p.next(l);) piped.push_back(l);
    writer.join();
    EXPECT_EQ(piped, (std::vector<std::string>{"p1", "p2"}));
    EXPECT_EQ(file_size_or_zero(d + "/f"), 6 + longline.size() + 1 + 4);
    EXPECT_EQ(file_size_or_zero(d + "/pipe"), 0u);
}

// ShardWriter writes what write_shard writes for the same tokens, appended in pieces, and leaves nothing
// behind when it is abandoned before commit().
TEST(Shard, WriterInPiecesEqualsWriteShardAndAbandonedLeavesNothing) {
    TempDir tmp("shardw");
    const std::string d = tmp.path();
    std::vector<int32_t> all;
    std::vector<uint8_t> mask;
    {
        ShardWriter w(d + "/w.bin", 50257);
        Rng rng(5);
        for (int piece = 0; piece < 7; piece++) {
            std::vector<int32_t> t(rng.below(3000));
            std::vector<uint8_t> m(t.size());
            for (size_t i = 0; i < t.size(); i++) {
                t[i] = (int32_t)rng.below(50257);
                m[i] = (uint8_t)(rng.below(3) != 0);
            }
            w.append(t, m);
            all.insert(all.end(), t.begin(), t.end());
            mask.insert(mask.end(), m.begin(), m.end());
        }
        EXPECT_EQ(w.tokens(), all.size());
        EXPECT_FALSE(std::filesystem::exists(d + "/w.bin")) << "visible before commit()";
        w.commit();
    }
    write_shard(d + "/ref.bin", all, &mask, 50257);
    EXPECT_EQ(slurp(d + "/w.bin"), slurp(d + "/ref.bin"));
    EXPECT_THAT(error_of([&] {
                    ShardWriter w(d + "/bad.bin", 100);
                    w.append({5, 100}, {1, 1});
                }),
                HasSubstr("bad.bin: token id 100 outside the vocabulary of 100"));
    {
        ShardWriter w(d + "/gone.bin", 50257);
        w.append({1, 2, 3}, {1, 1, 1});
    }
    std::vector<std::string> left;
    for (const auto& e : std::filesystem::directory_iterator(d)) left.push_back(e.path().filename().string());
    std::sort(left.begin(), left.end());
    EXPECT_EQ(left, (std::vector<std::string>{"ref.bin", "w.bin"})) << "a temporary file was left behind";
}

// Two atomic writers of one path in one process each get their own temporary file: whichever commits last
// is the file, and the other's abandoning or committing never touches it.
TEST(FileIo, TwoAtomicFilesForOnePathDoNotShareATemporary) {
    TempDir tmp("fileio");
    const std::string p = tmp.file("y.bin");
    {
        AtomicFile a(p), b(p);
        a.write("A", 1);
        b.write("BB", 2);
        a.commit();
        EXPECT_EQ(slurp(p), "A");
        b.commit();
    }
    EXPECT_EQ(slurp(p), "BB");
    {
        AtomicFile a(p);
        a.write("CCC", 3);
        { AtomicFile b(p); }  // abandoned first
        a.commit();
    }
    EXPECT_EQ(slurp(p), "CCC");
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(tmp.path()), {}), 1) << "a temporary was left";
}

// A killed writer's temporary (bin/export's model.safetensors, a Fisher estimate: gigabytes) is removed by the
// next atomic write of the same file on this host, with a note; a live process's, another host's and another
// file's are left alone.
TEST(FileIo, AnAtomicFileRemovesTheTemporaryAKilledWriterOfItsPathLeft) {
    TempDir tmp("fileio");
    const pid_t child = fork();
    if (child == 0) _exit(0);
    ASSERT_GT(child, 0);
    waitpid(child, nullptr, 0);  // a process id that is gone
    const std::string p = tmp.file("w.bin"), host = host_name(), gone = std::to_string(child);
    const std::string dead = p + ".tmp." + host + "." + gone + ".0";
    const std::vector<std::string> kept = {p + ".tmp." + host + "." + std::to_string(getppid()) + ".0",
                                           p + ".tmp.another-host." + gone + ".0",
                                           tmp.file("v.bin.tmp." + host + "." + gone + ".0"),
                                           tmp.file("xw.bin.tmp." + host + "." + gone + ".0"),
                                           tmp.file("w.bin2.tmp." + host + "." + gone + ".0"),
                                           p + ".tmp." + host + "." + gone + ".1"};  // locked: below
    spit(dead, "half a file");
    for (const std::string& k : kept) spit(k, "someone's");
    // A writer in another pid namespace (a container with this host name): its pid looks gone here, but it holds
    // the flock every AtomicFile takes on its temporary.
    const int held = ::open(kept.back().c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(held, 0);
    ASSERT_EQ(::flock(held, LOCK_EX), 0);
    testing::internal::CaptureStderr();
    write_file_atomic(p, "new", 3);
    EXPECT_THAT(testing::internal::GetCapturedStderr(),
                HasSubstr("note: " + dead + ": left by a run that was killed (its process on this host is gone): "
                          "removed"));
    EXPECT_FALSE(std::filesystem::exists(dead));
    for (const std::string& k : kept) EXPECT_TRUE(std::filesystem::exists(k)) << k;
    EXPECT_EQ(slurp(p), "new");
    ::close(held);
    {  // ... and every AtomicFile holds one while it writes, also after sync() closed its descriptor
        AtomicFile writing(tmp.file("u.bin"));
        writing.write("x", 1);
        writing.sync();
        std::string temporary;
        for (const auto& e : std::filesystem::directory_iterator(tmp.path()))
            if (e.path().filename().string().rfind("u.bin.tmp.", 0) == 0) temporary = e.path().string();
        ASSERT_FALSE(temporary.empty());
        const int probe = ::open(temporary.c_str(), O_RDONLY | O_CLOEXEC);
        ASSERT_GE(probe, 0);
        EXPECT_NE(::flock(probe, LOCK_EX | LOCK_NB), 0) << "the writer holds no lock on " << temporary;
        ::close(probe);
    }
}

// An atomic write follows a symbolic link (the link stays, its target is replaced; a dangling one's target is
// made) and refuses a FIFO or device, which the rename would turn into a plain file.
TEST(FileIo, AnAtomicFileWritesThroughLinksAndRefusesWhatIsNoFile) {
    TempDir tmp("fileio");
    spit(tmp.file("target.bin"), "old");
    std::filesystem::create_symlink("target.bin", tmp.file("link.bin"));
    write_file_atomic(tmp.file("link.bin"), "new", 3);
    EXPECT_TRUE(std::filesystem::is_symlink(tmp.file("link.bin")));
    EXPECT_EQ(slurp(tmp.file("target.bin")), "new");
    std::filesystem::create_symlink("later.bin", tmp.file("dangling.bin"));
    write_file_atomic(tmp.file("dangling.bin"), "made", 4);
    EXPECT_TRUE(std::filesystem::is_symlink(tmp.file("dangling.bin")));
    EXPECT_EQ(slurp(tmp.file("later.bin")), "made");
    ASSERT_EQ(::mkfifo(tmp.file("pipe").c_str(), 0644), 0);
    EXPECT_THAT(error_of([&] { write_file_atomic(tmp.file("pipe"), "x", 1); }),
                HasSubstr(tmp.file("pipe") + ": is a FIFO, not a file"));
    EXPECT_TRUE(std::filesystem::is_fifo(tmp.file("pipe")));
    EXPECT_THAT(error_of([&] { write_file_atomic("/dev/null", "x", 1); }),
                HasSubstr("/dev/null: is a character device, not a file"));
}

// One writer at a time in a directory: a second lock (even in the same process) is refused with the holder's
// name; the holder's end frees the directory and removes the file (and the directory, if it made it and it is
// empty); a file a killed holder left is taken over.
TEST(FileIo, ADirectoryLockRefusesASecondWriterUntilTheFirstEnds) {
    TempDir tmp("dirlock");
    const std::string d = tmp.file("run");
    {
        const DirLock first(d, "bin/train");
        EXPECT_THAT(error_of([&] { DirLock second(d, "bin/prepare"); }),
                    HasSubstr(d + ": in use by bin/train, pid " + std::to_string(getpid()) + " on host " +
                              host_name() + "; two writers in one directory"));
        EXPECT_THAT(slurp(d + "/.lock"), HasSubstr("bin/train, pid "));
    }
    EXPECT_FALSE(std::filesystem::exists(d)) << "made for the lock and left empty: removed with it";
    std::filesystem::create_directories(d);
    spit(d + "/.lock", "bin/train, pid 1 on host gone\n");  // a killed run's: nobody holds its lock
    {
        const DirLock again(d, "bin/prepare");
        EXPECT_EQ(slurp(d + "/.lock"),
                  "bin/prepare, pid " + std::to_string(getpid()) + " on host " + host_name() + "\n");
    }
    EXPECT_FALSE(std::filesystem::exists(d + "/.lock"));
    EXPECT_TRUE(std::filesystem::exists(d)) << "a directory the lock did not make stays";
}

// A shard made for another vocabulary than the model's (its header says which) is noted, though its ids fit,
// and named in the error when they do not; one made for the model's vocabulary is not noted.
TEST(Loader, AShardMadeForAnotherVocabularyIsNoted_V1000_V50257) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    write_shard(d + "/v1000.bin", iota_tokens(40, 1000), nullptr, 1000);
    Loader other({d + "/v1000.bin"}, 50257, 2, 10, false, 0);
    ASSERT_EQ(other.shard_notes().size(), 1u);
    EXPECT_THAT(other.shard_notes()[0], HasSubstr("v1000.bin: made for a vocabulary of 1000 tokens, and the model "
                                                  "has 50257: the same ids mean other tokens"));
    Loader same({d + "/v1000.bin"}, 1000, 2, 10, false, 0);
    EXPECT_TRUE(same.shard_notes().empty());
    write_shard(d + "/gpt2.bin", iota_tokens(40, 1000), nullptr, 50257);  // GPT-2's ids on a model that adds a token
    Loader added({d + "/gpt2.bin"}, 50258, 2, 10, false, 0);
    EXPECT_TRUE(added.shard_notes().empty());
    std::vector<int32_t> wide = iota_tokens(40, 1000);
    wide[5] = 60000;
    write_shard(d + "/v60k.bin", wide, nullptr, 60000);
    EXPECT_THAT(error_of([&] { read_shard(d + "/v60k.bin", 50257); }),
                HasSubstr("v60k.bin: token 5 has id 60000, not below the vocabulary size 50257 (the shard was made "
                          "for a vocabulary of 60000)"));
}

// A shard shorter than one window (a small validation split) is one window, padded: token 0 in and out with
// weight 0 past its end, the mask kept before it; a shard with nothing to predict is named.
TEST(Loader, ShardShorterThanOneWindowIsOnePaddedWindow_n8_T10) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    const std::vector<uint8_t> mask = {1, 1, 0, 1, 1, 1, 0, 1};
    write_shard(d + "/short.bin", iota_tokens(8, 50), &mask, 50);
    Loader l({d + "/short.bin"}, 50, 2, 10, false, 0);
    ASSERT_EQ(l.num_windows(), 1u);
    ASSERT_EQ(l.shard_notes().size(), 1u);
    EXPECT_THAT(l.shard_notes()[0], HasSubstr("short.bin: 8 tokens, shorter than one window of T+1 = 11: one "
                                               "window, padded"));
    Batch b;
    ASSERT_TRUE(l.next_in_epoch(b));
    ASSERT_EQ(b.B, 1);
    const std::vector<int32_t> tokens = iota_tokens(8, 50);
    for (int t = 0; t < 10; t++) {
        EXPECT_EQ(b.inputs[t], t < 8 ? tokens[t] : 0) << t;
        EXPECT_EQ(b.targets[t], t < 7 ? tokens[t + 1] : 0) << t;
        EXPECT_EQ(b.weights[t], t < 7 ? (float)mask[t + 1] : 0.0f) << t;
    }
    EXPECT_FALSE(l.next_in_epoch(b));
    write_shard(d + "/one.bin", iota_tokens(1, 50), nullptr, 50);
    EXPECT_THAT(error_of([&] { Loader one({d + "/one.bin"}, 50, 1, 8, false, 0); }),
                HasSubstr("one.bin: 1 token, so nothing to predict"));
    // With a mask too: one token is too short, whatever its mask says (it was "the loss mask is 0 at every one").
    const std::vector<uint8_t> one_mask(1, 1);
    write_shard(d + "/one_masked.bin", iota_tokens(1, 50), &one_mask, 50);
    EXPECT_THAT(error_of([&] { Loader one({d + "/one_masked.bin"}, 50, 1, 8, false, 0); }),
                HasSubstr("one_masked.bin: 1 token, so nothing to predict"));
}

// Document windows over four documents ending in token 99: A (4 tokens), B (6), C (22: longer than a window of
// T = 8) and D (3). Each window starts at a document's end token (or the shard's start) and takes the whole
// documents that fit in 8 targets; C is cut into windows of 8 and the one its end needs. Worked out by hand:
// (start, targets) = (0, 3) A | (3, 6) B | (9, 8) (17, 8) (25, 6) C | (31, 3) D: every target 1..34 once.
TEST(Loader, DocumentWindowsHoldWholeDocumentsPaddedAndCutLongOnes_T8) {
    TempDir tmp("loader");
    std::vector<int32_t> tok = {1, 2, 3, 99, 4, 5, 6, 7, 8, 99};  // A, B
    for (int i = 10; i <= 30; i++) tok.push_back(i);              // C
    tok.push_back(99);
    for (int32_t t : {40, 41, 99}) tok.push_back(t);  // D
    ASSERT_EQ(tok.size(), 35u);
    std::vector<uint8_t> mask(tok.size(), 1);
    for (size_t i : {1, 4, 5, 32}) mask[i] = 0;  // prompts
    write_shard(tmp.file("docs.bin"), tok, &mask, 100);
    const int T = 8;
    Loader l({tmp.file("docs.bin")}, 100, 1, T, false, 0, 0, 1, 99);
    const std::vector<std::pair<int, int>> expect = {{0, 3}, {3, 6}, {9, 8}, {17, 8}, {25, 6}, {31, 3}};
    ASSERT_EQ(l.num_windows(), expect.size());
    EXPECT_DOUBLE_EQ(l.filled(), 34.0 / (6 * T));
    EXPECT_EQ(l.long_documents(), 1u) << "C, once";
    Batch b;
    for (const auto& [start, len] : expect) {
        ASSERT_TRUE(l.next_in_epoch(b));
        for (int t = 0; t < T; t++) {
            SCOPED_TRACE("window at " + std::to_string(start) + ", position " + std::to_string(t));
            EXPECT_EQ(b.inputs[t], t <= len ? tok[start + t] : 0);
            EXPECT_EQ(b.targets[t], t < len ? tok[start + t + 1] : 0);
            EXPECT_EQ(b.weights[t], t < len ? (float)mask[start + t + 1] : 0.0f);
        }
    }
    EXPECT_FALSE(l.next_in_epoch(b));
    // A shard whose last document has no end token (a cut file) ends its last window at the shard's end.
    write_shard(tmp.file("tail.bin"), {99, 5, 6, 7}, nullptr, 100);
    Loader tail({tmp.file("tail.bin")}, 100, 1, T, false, 0, 0, 1, 99);
    ASSERT_EQ(tail.num_windows(), 1u);
    EXPECT_EQ(tail.long_documents(), 0u);
    ASSERT_TRUE(tail.next_in_epoch(b));
    EXPECT_EQ(std::vector<int32_t>(b.targets.begin(), b.targets.begin() + 4), (std::vector<int32_t>{5, 6, 7, 0}));
    EXPECT_EQ(b.inputs[3], 7);
    EXPECT_EQ(std::vector<float>(b.weights.begin(), b.weights.end()), (std::vector<float>{1, 1, 1, 0, 0, 0, 0, 0}));
    // Fixed windows over the same shard cut B: its end is the second window's first target, its prompt (4, 5)
    // left in the first window.
    Loader fixed({tmp.file("docs.bin")}, 100, 1, T, false, 0);
    ASSERT_TRUE(fixed.next_in_epoch(b));
    ASSERT_TRUE(fixed.next_in_epoch(b));
    EXPECT_EQ(b.inputs[0], 8);
    EXPECT_EQ(b.targets[0], 99);
    EXPECT_DOUBLE_EQ(fixed.filled(), 34.0 / (5 * T));  // the tail window overlaps the one before: 2 of its 8 count
    // How the fixed windows cut the documents: B's end (target 9) is trained without B's beginning; C, longer
    // than a window, is cut by document windows too, so its targets do not count.
    const Loader::Cuts c = fixed.cuts(99, 1000);
    EXPECT_EQ(c.counted, 30u);  // 34 targets, 4 of them prompt
    EXPECT_EQ(c.cut, 1u);
    EXPECT_TRUE(fixed.masked());
    EXPECT_TRUE(c.all);
    EXPECT_EQ(l.cuts(99, 1000).cut, 0u) << "document windows keep every document that fits whole";
    // A bounded look: the first window's 8 targets (3 of them prompt).
    const Loader::Cuts first = fixed.cuts(99, 8);
    EXPECT_FALSE(first.all);
    EXPECT_EQ(first.counted, 5u);
    EXPECT_FALSE(tail.masked()) << "no mask: plain text";
}

// Packed document windows against one document a window (--windows single), over A = (1, 2, end), B = (3, end),
// C = (4, 5, 6, end), D (11 tokens and its end: longer than T = 8) and E = (7), cut off without an end. Worked
// out by hand, (start, targets): packed (0, 8) A B C | (8, 8) (16, 5) D and E; single (0, 2) A | (2, 2) B |
// (4, 4) C | (8, 8) (16, 4) D | (20, 1) E. Either way every target 1..21 once, and D is the one long document.
std::vector<int32_t> five_documents() {  // A B C D E of the comment above, ending with 99
    std::vector<int32_t> tok = {1, 2, 99, 3, 99, 4, 5, 6, 99};
    for (int i = 10; i <= 20; i++) tok.push_back(i);
    tok.push_back(99);
    tok.push_back(7);
    return tok;
}

TEST(Loader, SingleDocumentWindowsHoldOneDocumentEach_T8) {
    TempDir tmp("single");
    const std::vector<int32_t> tok = five_documents();
    ASSERT_EQ(tok.size(), 22u);
    write_shard(tmp.file("d.bin"), tok, nullptr, 100);
    const int T = 8;
    auto windows = [&](Windows w) {
        Loader l({tmp.file("d.bin")}, 100, 1, T, false, 0, 0, 1, 99, w);
        EXPECT_EQ(l.long_documents(), 1u) << "D, once";
        std::vector<std::pair<int, int>> got;  // (start, targets), read back from the rows
        for (Batch b; l.next_in_epoch(b);) {
            int len = 0;
            while (len < T && b.weights[len] > 0) len++;
            size_t start = 0;
            while (start < tok.size() && !(tok[start] == b.inputs[0] && tok[start + 1] == b.targets[0])) start++;
            got.push_back({(int)start, len});
            for (int t = 0; t < T; t++) {
                SCOPED_TRACE("window at " + std::to_string(start) + ", position " + std::to_string(t));
                EXPECT_EQ(b.inputs[t], t <= len ? tok[start + t] : 0);
                EXPECT_EQ(b.targets[t], t < len ? tok[start + t + 1] : 0);
            }
        }
        return got;
    };
    EXPECT_EQ(windows(Windows::documents), (std::vector<std::pair<int, int>>{{0, 8}, {8, 8}, {16, 5}}));
    EXPECT_EQ(windows(Windows::single), (std::vector<std::pair<int, int>>{{0, 2}, {2, 2}, {4, 4}, {8, 8}, {16, 4}, {20, 1}}));
    EXPECT_EQ(parse_windows("single"), Windows::single);
    EXPECT_EQ(windows_name(parse_windows("documents")), std::string("documents"));
    EXPECT_THAT(error_of([] { parse_windows("document"); }),
                HasSubstr("--windows: expected fixed, documents, single or isolated, got 'document'"));
}

// Isolated windows are the packed document windows of the test above, with each token's position in its document:
// a document starts at the <|endoftext|> before it or at the row's start. Worked out by hand from the three
// windows' inputs (1 2 99 3 99 4 5 6 | 99 10 .. 16 | 17 18 19 20 99, then the padding 7 0 0).
TEST(Loader, IsolatedWindowsArePackedDocumentsWithTheirPositions_T8) {
    TempDir tmp("isolated");
    const std::vector<int32_t> tok = five_documents();
    write_shard(tmp.file("d.bin"), tok, nullptr, 100);
    const int T = 8;
    Loader packed({tmp.file("d.bin")}, 100, 1, T, false, 0, 0, 1, 99),
        isolated({tmp.file("d.bin")}, 100, 1, T, false, 0, 0, 1, 99, Windows::isolated);
    const std::vector<std::vector<int32_t>> want = {
        {0, 1, 0, 1, 0, 1, 2, 3}, {0, 1, 2, 3, 4, 5, 6, 7}, {0, 1, 2, 3, 0, 1, 2, 3}};
    Batch a, b;
    for (const auto& w : want) {
        ASSERT_TRUE(packed.next_in_epoch(a));
        ASSERT_TRUE(isolated.next_in_epoch(b));
        EXPECT_EQ(b.inputs, a.inputs);
        EXPECT_EQ(b.targets, a.targets);
        EXPECT_EQ(b.weights, a.weights);
        EXPECT_EQ(b.positions, w);
        EXPECT_TRUE(a.positions.empty()) << "documents windows carry no positions";
        EXPECT_EQ(a.positions_or_null(), nullptr);
    }
    EXPECT_FALSE(isolated.next_in_epoch(b));
    // next() (training) fills them too, for every row.
    Loader two({tmp.file("d.bin")}, 100, 2, T, false, 0, 0, 1, 99, Windows::isolated);
    const Batch n = two.next();
    ASSERT_EQ(n.positions.size(), 2u * T);
    EXPECT_EQ(std::vector<int32_t>(n.positions.begin() + T, n.positions.end()), want[1]);
    EXPECT_EQ(parse_windows("isolated"), Windows::isolated);
    EXPECT_THAT(error_of([&] { Loader({tmp.file("d.bin")}, 100, 1, T, false, 0, 0, 1, -1, Windows::isolated); }),
                HasSubstr("isolated documents need the token that ends a document"));
}

// Loader::cuts against a plain reference over 300 documents of 2 to 12 tokens (some longer than T = 8),
// random prompt masks, fixed windows of 8: target j counts as cut when its document (from the token after the
// last end before j, or the shard's start) begins before the window's inputs and fits in one document window.
TEST(Loader, CutsMatchAPlainReference_300Documents_T8) {
    TempDir tmp("cuts");
    std::vector<int32_t> tok;
    std::vector<uint8_t> mask;
    uint64_t r = 12345;
    auto next = [&r](uint64_t n) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        return (r >> 33) % n;
    };
    for (int d = 0; d < 300; d++) {
        const size_t len = 2 + next(11), prompt = next(len);
        for (size_t i = 0; i + 1 < len; i++) {
            tok.push_back(1 + (int32_t)next(90));
            mask.push_back(i >= prompt);
        }
        tok.push_back(99);
        mask.push_back(1);
    }
    write_shard(tmp.file("c.bin"), tok, &mask, 100);
    const int T = 8;
    Loader fixed({tmp.file("c.bin")}, 100, 1, T, false, 0);
    const size_t n = tok.size();
    const size_t tail = n - T - 1, whole = (n - 1) / T * T;  // fixed windows start at 0, T, ...; then the tail
    uint64_t counted = 0, cut = 0;
    for (size_t j = 1; j < n; j++) {
        const size_t window = j > whole ? tail : (j - 1) / T * T;
        size_t from = 0, end = n - 1;  // the end before j's document (or 0), and its own end
        for (size_t i = 0; i < j; i++)
            if (tok[i] == 99) from = i;
        for (size_t i = n - 1; i + 1 > j; i--)
            if (tok[i] == 99) end = i;
        const size_t begins = from == 0 && tok[0] != 99 ? 0 : from + 1;
        if (!mask[j]) continue;
        counted++;
        cut += begins < window && end - from <= (size_t)T;
    }
    const Loader::Cuts c = fixed.cuts(99, 1u << 20);
    EXPECT_EQ(c.counted, counted);
    EXPECT_EQ(c.cut, cut);
    EXPECT_GT(cut, counted / 10) << "a test where little is cut tells little";
    Loader docs({tmp.file("c.bin")}, 100, 1, T, false, 0, 0, 1, 99);
    EXPECT_EQ(docs.cuts(99, 1u << 20).cut, 0u);
    // One document a window: no end token among a window's inputs after its first (nothing of another document
    // to attend to); a window ends at its document's end unless it is full or the shard's last (no document
    // split that would fit); every target once; more windows than packed.
    Loader single({tmp.file("c.bin")}, 100, 1, T, false, 0, 0, 1, 99, Windows::single);
    EXPECT_GT(single.num_windows(), docs.num_windows());
    uint64_t targets = 0;
    for (Batch b; single.next_in_epoch(b);) {
        int len = 0;
        for (; len < T && b.targets[len] != 0; len++) {
            targets++;
            if (len > 0) {
                EXPECT_NE(b.inputs[len], 99) << "a second document in the window ending at target " << targets;
            }
        }
        ASSERT_GT(len, 0);
        if (len < T && targets < n - 1) {
            EXPECT_EQ(b.targets[len - 1], 99) << "a window ended inside a document, at target " << targets;
        }
    }
    EXPECT_EQ(targets, n - 1);
}

// A shard rewritten in place at its length after it was read (bytes changed under the mapping) is checked again
// as windows are read: an id past the vocabulary would index past the embedding table.
TEST(Loader, AShardRewrittenInPlaceIsCheckedAsItIsRead_n100_T10) {
    TempDir tmp("rewrite");
    const std::string p = tmp.file("a.bin");
    write_shard(p, iota_tokens(100, 50), nullptr, 50);
    Loader l({p}, 50, 1, 10, false, 0);
    Batch b;
    ASSERT_TRUE(l.next_in_epoch(b));  // window 0, as read
    std::FILE* f = std::fopen(p.c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    const uint8_t id[2] = {60, 0};  // token 13 (16-bit, after the 32-byte header) becomes 60
    std::fseek(f, 32 + 2 * 13, SEEK_SET);
    std::fwrite(id, 1, 2, f);
    std::fclose(f);
    EXPECT_EQ(error_of([&] { l.next_in_epoch(b); }),
              p + ": token 13 is now 60, not below the vocabulary size 50: the file was rewritten in place while it "
                  "was being read (replace shards by renaming new ones over them)");
}

TEST(Loader, ShardWhoseMaskCountsNothingIsNamed) {
    TempDir tmp("shard");
    const std::vector<uint8_t> none(40, 0);
    write_shard(tmp.file("none.bin"), std::vector<int32_t>(40, 3), &none, 37);
    EXPECT_THAT(error_of([&] { Loader l({tmp.file("none.bin")}, 37, 2, 8, false, 0); }),
                HasSubstr("none.bin: the loss mask is 0 at every one of the 39 tokens that are predicted (all but "
                          "the first of its 40)"));
    std::vector<uint8_t> first = none;  // token 0 is only ever an input: its weight counts nothing
    first[0] = 1;
    write_shard(tmp.file("first.bin"), std::vector<int32_t>(40, 3), &first, 37);
    EXPECT_THAT(error_of([&] { Loader l({tmp.file("first.bin")}, 37, 2, 8, false, 0); }),
                HasSubstr("first.bin: the loss mask is 0 at every one of the 39 tokens"));
    std::vector<uint8_t> one = none;
    one[17] = 1;
    write_shard(tmp.file("one.bin"), std::vector<int32_t>(40, 3), &one, 37);
    EXPECT_NO_THROW(Loader({tmp.file("one.bin")}, 37, 2, 8, false, 0));
}

TEST(Loader, SequentialWindowsAreShiftedTargetsWithMaskWeights) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    auto t = iota_tokens(50, 1000);
    std::vector<uint8_t> m(50);
    for (size_t i = 0; i < 50; i++) m[i] = i % 2;
    write_shard(d + "/a.bin", t, &m, 1000);
    Loader l({d + "/a.bin"}, 1000, 2, 7, false, 0);
    Batch b = l.next();
    for (int row = 0; row < 2; row++)
        for (int i = 0; i < 7; i++) {
            EXPECT_EQ(b.inputs[row * 7 + i], row * 7 + i);
            EXPECT_EQ(b.targets[row * 7 + i], row * 7 + i + 1);
            EXPECT_EQ(b.weights[row * 7 + i], (float)((row * 7 + i + 1) % 2));
        }
}

// Shards whose length does not fit whole windows: the last window ends at the shard's last token and counts
// only the targets no window before it counted, so an epoch counts every target exactly once, weighted by
// its mask. Token values name (shard, position), so the test sees which target each weight belongs to.
TEST(Loader, AnEpochCountsEveryTargetOnceTailsIncluded) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    const int T = 8;
    const std::vector<size_t> lengths = {23, 9, 41, 17, 30};  // 9, 17 and 41 (kT+1) fit exactly
    std::vector<std::string> paths;
    std::vector<std::vector<uint8_t>> masks;
    for (size_t s = 0; s < lengths.size(); s++) {
        std::vector<int32_t> tok(lengths[s]);
        std::vector<uint8_t> m(lengths[s]);
        for (size_t i = 0; i < lengths[s]; i++) {
            tok[i] = (int32_t)(s * 100 + i);
            m[i] = (uint8_t)((i * 7 + s) % 3 != 0);
        }
        masks.push_back(m);
        paths.push_back(d + "/s" + std::to_string(s) + ".bin");
        write_shard(paths.back(), tok, s % 2 ? nullptr : &m, 1000);  // odd shards have no mask: all count
    }
    for (bool shuffle : {false, true}) {
        Loader l(paths, 1000, 3, T, shuffle, 11);
        std::map<int32_t, float> weight;  // target token -> summed weight over the epoch
        Batch b;
        while (l.next_in_epoch(b))
            for (size_t i = 0; i < b.targets.size(); i++) {
                weight[b.targets[i]] += b.weights[i];
                if (i % T) {
                    EXPECT_EQ(b.inputs[i], b.targets[i - 1]);
                }
            }
        for (size_t s = 0; s < lengths.size(); s++)
            for (size_t i = 1; i < lengths[s]; i++) {
                const int32_t tok = (int32_t)(s * 100 + i);
                const float want = s % 2 ? 1.0f : (float)masks[s][i];
                EXPECT_EQ(weight[tok], want) << "shard " << s << " target " << i << (shuffle ? " shuffled" : "");
            }
        EXPECT_EQ(weight.count(0), 0u) << "a shard's first token is never a target";
    }
    // 3 + 1 + 5 + 2 + 4 windows: 23 and 30 tokens each end in an overlapping tail window.
    EXPECT_EQ(Loader(paths, 1000, 3, T, false, 0).num_windows(), 15u);
}

TEST(Loader, ShuffleIsDeterministicAndVisitsEveryWindowOncePerEpoch) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    write_shard(d + "/a.bin", iota_tokens(5 * 20 + 1, 1000), nullptr, 1000);  // 20 windows of T=5
    Loader a({d + "/a.bin"}, 1000, 4, 5, true, 42), b({d + "/a.bin"}, 1000, 4, 5, true, 42);
    std::multiset<int32_t> starts;
    for (int i = 0; i < 5; i++) {
        Batch x = a.next(), y = b.next();
        EXPECT_EQ(x.inputs, y.inputs);
        for (int r = 0; r < 4; r++) starts.insert(x.inputs[r * 5]);
    }
    EXPECT_EQ(starts.size(), 20u);
    EXPECT_EQ(std::set<int32_t>(starts.begin(), starts.end()).size(), 20u);  // each window exactly once
    Loader c({d + "/a.bin"}, 1000, 4, 5, true, 43);
    bool differs = false;
    Loader a2({d + "/a.bin"}, 1000, 4, 5, true, 42);
    for (int i = 0; i < 5; i++) differs |= c.next().inputs != a2.next().inputs;
    EXPECT_TRUE(differs) << "a different seed gave the same order";
}

TEST(Loader, RanksSeeDisjointWindows) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    write_shard(d + "/a.bin", iota_tokens(4 * 30 + 1, 1000), nullptr, 1000);  // 30 windows of T=4
    std::set<int32_t> seen;
    for (int rank = 0; rank < 3; rank++) {
        Loader l({d + "/a.bin"}, 1000, 2, 4, true, 7, rank, 3);
        for (int i = 0; i < 5; i++) {
            Batch b = l.next();
            for (int r = 0; r < 2; r++) EXPECT_TRUE(seen.insert(b.inputs[r * 4]).second) << "rank " << rank;
        }
    }
    EXPECT_EQ(seen.size(), 30u);
}

// The epochs' orders are one stream that rounds of W windows run through, across epoch ends: 2 ranks x 2
// read, step by step, what 1 rank x 4 reads (7 windows, so rounds straddle epochs), a state saved on 2 ranks
// continues on 1 as the 1-rank run goes on, and every epoch reads each window once.
TEST(Loader, WindowsDependOnTheGlobalBatchNotTheRanks_7windows_2x2_vs_1x4) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    write_shard(d + "/a.bin", iota_tokens(4 * 7 + 1, 1000), nullptr, 1000);  // 7 windows of T=4
    for (bool shuffle : {false, true}) {
        SCOPED_TRACE(shuffle ? "shuffled" : "in file order");
        Loader one({d + "/a.bin"}, 1000, 4, 4, shuffle, 5);
        Loader r0({d + "/a.bin"}, 1000, 2, 4, shuffle, 5, 0, 2), r1({d + "/a.bin"}, 1000, 2, 4, shuffle, 5, 1, 2);
        ASSERT_EQ(one.num_windows(), 7u);
        std::vector<int> reads(7, 0);
        LoaderState at2;
        for (int step = 0; step < 7; step++) {  // 28 windows: 4 epochs, each read every window once
            const Batch a = one.next(), b0 = r0.next(), b1 = r1.next();
            // Global round j: rank 0 row j, rank 1 row j = one's rows 2j, 2j + 1.
            for (int j = 0; j < 2; j++) {
                EXPECT_EQ(b0.inputs[j * 4], a.inputs[(2 * j) * 4]) << "step " << step;
                EXPECT_EQ(b1.inputs[j * 4], a.inputs[(2 * j + 1) * 4]) << "step " << step;
            }
            for (int r = 0; r < 4; r++) reads[a.inputs[r * 4] / 4]++;
            EXPECT_EQ(r0.state().epoch, one.state().epoch);
            EXPECT_EQ(r0.state().cursor, one.state().cursor);
            if (step == 1) at2 = r0.state();  // 8 windows in: epoch 1, cursor 1
        }
        EXPECT_EQ(reads, std::vector<int>(7, 4));
        Loader fresh({d + "/a.bin"}, 1000, 4, 4, shuffle, 5), resumed({d + "/a.bin"}, 1000, 4, 4, shuffle, 5);
        fresh.next();
        fresh.next();
        resumed.set_state(at2);
        for (int step = 2; step < 7; step++) EXPECT_EQ(resumed.next().inputs, fresh.next().inputs) << "step " << step;
    }
}

// Evaluation over ranks: one pass of next_in_epoch on every rank counts every window once, the last round
// partial (10 windows on 3 ranks: 4, 3 and 3), even with fewer windows than ranks (a short validation split).
TEST(Loader, OnePassOverRanksCountsEveryWindowOnce_10windows_3ranks_and_1window_2ranks) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    write_shard(d + "/a.bin", iota_tokens(4 * 10 + 1, 1000), nullptr, 1000);  // 10 windows of T=4
    std::multiset<int32_t> seen;
    for (int rank = 0; rank < 3; rank++) {
        Loader l({d + "/a.bin"}, 1000, 2, 4, false, 0, rank, 3);
        EXPECT_EQ(l.windows_per_epoch(), rank == 0 ? 4u : 3u);
        Batch b;
        size_t rows = 0;
        while (l.next_in_epoch(b)) {
            for (int r = 0; r < b.B; r++) seen.insert(b.inputs[r * 4]);
            rows += b.B;
        }
        EXPECT_EQ(rows, l.windows_per_epoch()) << "rank " << rank;
    }
    EXPECT_EQ(seen.size(), 10u);
    EXPECT_EQ(std::set<int32_t>(seen.begin(), seen.end()).size(), 10u) << "a window was counted twice";
    write_shard(d + "/short.bin", iota_tokens(3, 1000), nullptr, 1000);
    Loader r0({d + "/short.bin"}, 1000, 2, 4, false, 0, 0, 2), r1({d + "/short.bin"}, 1000, 2, 4, false, 0, 1, 2);
    Batch b;
    EXPECT_TRUE(r0.next_in_epoch(b));
    EXPECT_FALSE(r1.next_in_epoch(b));
    EXPECT_THAT(error_of([&] { r1.next(); }), HasSubstr("the training data has 1 windows of T+1 tokens, fewer than "
                                                        "the 2 ranks"));
}

TEST(Loader, SavedPositionContinuesExactlyAcrossEpochs) {
    TempDir tmp("loader");
    const std::string d = tmp.path();
    write_shard(d + "/a.bin", iota_tokens(3 * 10 + 1, 1000), nullptr, 1000);
    Loader a({d + "/a.bin"}, 1000, 3, 3, true, 5);
    for (int i = 0; i < 4; i++) a.next();  // 12 windows: into the second epoch
    LoaderState s = a.state();
    EXPECT_EQ(s.epoch, 1u);
    Loader b({d + "/a.bin"}, 1000, 3, 3, true, 5);
    b.set_state(s);
    for (int i = 0; i < 6; i++) EXPECT_EQ(a.next().inputs, b.next().inputs);
}

}  // namespace
}  // namespace tune::test
