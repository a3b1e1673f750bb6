#include "train/roll_call.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "kernels/common.h"

namespace tune {

namespace {

constexpr size_t kLongestLine = 64 * 1024;  // rank 0 drops a peer whose line runs longer (not one of ours)
constexpr int kBatchFromWorld = 64;         // above this many ranks, rank 0 reads the lines in batches

// Names travel on one line: no line breaks inside, and not unbounded.
std::string one_line(const std::string& s, size_t max = 200) {
    std::string o = s.substr(0, max);
    for (char& c : o)
        if (c == '\n' || c == '\r') c = ' ';
    return o;
}

std::string position(uint64_t seq, const std::string& what) {
    return seq == 0 ? std::string("before its first collective")
                    : "after entering collective #" + std::to_string(seq) + " '" + what + "'";
}

// "host:port", "[v6]:port" -> host, port; a bare host ("name", "10.0.0.1", "[v6]", "fe80::1") keeps `port`.
// False for anything else ("[v6", "[v6]x", "host:", "host:http", a port past 65535, no host).
bool split_address(const std::string& a, std::string* host, int* port) {
    std::string rest;  // what follows the host: "" or ":port"
    if (!a.empty() && a[0] == '[') {
        const size_t close = a.find(']');
        if (close == std::string::npos) return false;
        *host = a.substr(1, close - 1);
        rest = a.substr(close + 1);
    } else {
        const size_t colon = a.rfind(':');
        const bool bare = colon == std::string::npos || a.find(':') != colon;  // IPv6 without brackets has several
        *host = bare ? a : a.substr(0, colon);
        rest = bare ? "" : a.substr(colon);
    }
    if (host->empty()) return false;
    if (rest.empty()) return true;
    if (rest[0] != ':' || rest.size() < 2 || rest.size() > 6 ||
        rest.find_first_not_of("0123456789", 1) != std::string::npos)
        return false;
    const int p = std::atoi(rest.c_str() + 1);
    if (p > 65535) return false;
    *port = p;
    return true;
}

// Rank 0 holds a socket per rank: with a thousand ranks the usual soft limit of 1024 descriptors (which NCCL's
// own sockets share) is not enough. The soft limit may be raised up to the hard one without privileges.
void raise_descriptor_limit(int world) {
    rlimit l{};
    if (::getrlimit(RLIMIT_NOFILE, &l) != 0) return;
    const rlim_t want = (rlim_t)world + 1024;
    if (l.rlim_cur == RLIM_INFINITY || l.rlim_cur >= want) return;
    l.rlim_cur = l.rlim_max == RLIM_INFINITY ? want : std::min(want, l.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &l);
}

// The other way: an IPv6 literal goes in brackets, so its colons are not read as the port's.
std::string join_address(const std::string& host, int port) {
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Splits complete lines off the front of buf.
std::vector<std::string> take_lines(std::string& buf) {
    std::vector<std::string> lines;
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
        lines.push_back(buf.substr(0, nl));
        buf.erase(0, nl + 1);
    }
    return lines;
}

// Reads what is there into buf; false when the peer closed (or the read failed).
bool read_some(int fd, std::string& buf) {
    char tmp[4096];
    const ssize_t k = ::recv(fd, tmp, sizeof tmp, 0);
    if (k <= 0) return false;
    buf.append(tmp, (size_t)k);
    return true;
}

bool send_line(const Fd& fd, const std::string& line) {
    const std::string l = line + "\n";
    return fd.ok() && send_all(fd.fd, l.data(), l.size());
}

// A peer that stops reading (its host stalled) must not stall this thread, which serves everyone: a send
// that cannot go within a second fails, and the line is lost.
void limit_send_wait(const Fd& fd) {
    timeval tv{1, 0};
    ::setsockopt(fd.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

const char* kEveryRankEntered = "every rank has entered it, so no rank is behind (NCCL or the network is stuck)";

// A decimal number at line[*pos] (digits only, within uint64); *pos moves past it.
bool take_number(const std::string& line, size_t* pos, uint64_t* v) {
    const char* first = line.data() + *pos;
    const char* last = line.data() + line.size();
    if (first == last || *first < '0' || *first > '9') return false;  // from_chars would not take a sign, but be plain
    const std::from_chars_result r = std::from_chars(first, last, *v);
    if (r.ec != std::errc()) return false;  // more than uint64 holds
    *pos = (size_t)(r.ptr - line.data());
    return true;
}

// A rank of the world at line[*pos], from `lowest`.
bool take_rank(const std::string& line, size_t* pos, int world, int lowest, int* rank) {
    uint64_t r = 0;
    if (!take_number(line, pos, &r) || r < (uint64_t)lowest || r >= (uint64_t)world) return false;
    *rank = (int)r;
    return true;
}

// What follows at line[pos]: nothing, or a space and the text (which may be empty).
bool take_text(const std::string& line, size_t pos, std::string* text) {
    if (pos == line.size()) return text->clear(), true;
    if (line[pos] != ' ') return false;
    *text = line.substr(pos + 1);
    return true;
}

// Whether the line starts with `word`; *pos then points past it.
bool starts(const std::string& line, const char* word, size_t* pos) {
    const size_t n = std::strlen(word);
    if (line.compare(0, n, word) != 0) return false;
    *pos = n;
    return true;
}

// Both directions: the lines a rank sends, or (from_rank0) those rank 0 sends. "bye" goes both ways.
RollLine parse_line(const std::string& line, int world, bool from_rank0) {
    using K = RollLine::Kind;
    RollLine l;
    size_t pos = 0;
    bool ok = false;
    if (line == "bye") {
        l.kind = K::bye, ok = true;
    } else if (!from_rank0) {
        if (starts(line, "hello ", &pos)) {
            l.kind = K::hello;
            ok = take_rank(line, &pos, world, 1, &l.rank) && pos == line.size();
        } else if (starts(line, "at ", &pos)) {
            l.kind = K::at;
            ok = take_number(line, &pos, &l.seq) && take_text(line, pos, &l.text);
        } else if (starts(line, "ask ", &pos)) {
            l.kind = K::ask;
            ok = take_number(line, &pos, &l.seq) && pos == line.size();
        } else if (starts(line, "stop", &pos)) {
            l.kind = K::stop;
            ok = take_text(line, pos, &l.text);
        }
    } else if (starts(line, "stop ", &pos)) {
        l.kind = K::stop;
        ok = take_rank(line, &pos, world, 0, &l.rank) && take_text(line, pos, &l.text);
    } else if (starts(line, "gone ", &pos)) {
        l.kind = K::gone;
        ok = take_rank(line, &pos, world, 1, &l.rank) && pos < line.size() && line[pos++] == ' ' &&
             take_number(line, &pos, &l.seq) && take_text(line, pos, &l.text);
    } else if (starts(line, "verdict ", &pos)) {
        l.kind = K::verdict;
        ok = take_number(line, &pos, &l.seq) && take_text(line, pos, &l.text);
    }
    return ok ? l : RollLine{};
}

}  // namespace

RollLine parse_line_to_rank0(const std::string& line, int world) { return parse_line(line, world, false); }

RollLine parse_line_from_rank0(const std::string& line, int world) { return parse_line(line, world, true); }

std::string roll_line_text(const RollLine& l) {
    using K = RollLine::Kind;
    const std::string seq = std::to_string(l.seq), rank = std::to_string(l.rank);
    switch (l.kind) {
        case K::hello: return "hello " + rank;
        case K::at: return "at " + seq + " " + l.text;
        case K::ask: return "ask " + seq;
        case K::stop: return l.rank < 0 ? "stop " + l.text : "stop " + rank + " " + l.text;
        case K::bye: return "bye";
        case K::gone: return "gone " + rank + " " + seq + " " + l.text;
        case K::verdict: return "verdict " + seq + " " + l.text;
        case K::none: break;
    }
    return "";
}

std::string roll_call_blame(const std::vector<RollEntry>& table, uint64_t seq, double now, double silent_s) {
    std::vector<std::string> why;
    std::vector<int> absent;  // never connected (a firewall, or slow to start): unknown, so named after the others
    for (size_t r = 0; r < table.size(); r++) {
        const RollEntry& e = table[r];
        const std::string rank = "rank " + std::to_string(r);
        char secs[32];
        std::snprintf(secs, sizeof secs, "%.0f", now - e.heard);
        switch (e.state) {
            case RollEntry::State::absent: absent.push_back((int)r); break;
            case RollEntry::State::gone:
                why.push_back(e.why.empty() ? rank + " died " + position(e.seq, e.what)
                                            : rank + " stopped " + position(e.seq, e.what) + " (" + e.why + ")");
                break;
            case RollEntry::State::finished:
                if (e.seq < seq) why.push_back(rank + " had already finished, " + position(e.seq, e.what));
                break;
            case RollEntry::State::alive:
                if (now - e.heard > silent_s)
                    why.push_back(rank + " has not been heard from for " + secs + " s (its host is down or stalled), " +
                                  position(e.seq, e.what));
                else if (e.seq < seq)
                    why.push_back(rank + " never entered it: it hangs " + position(e.seq, e.what));
                break;
        }
    }
    constexpr size_t kNamed = 8;
    std::string out;
    for (size_t i = 0; i < why.size() && i < kNamed; i++) out += (i ? "; " : "") + why[i];
    if (why.size() > kNamed) out += "; and " + std::to_string(why.size() - kNamed) + " more ranks";
    if (!absent.empty()) {
        out += out.empty() ? "" : "; ";
        out += absent.size() == 1 ? "rank " : "ranks ";
        const size_t named = std::min(absent.size(), kNamed);
        for (size_t i = 0; i < named; i++)
            out += (i == 0 ? "" : i + 1 == named && named == absent.size() ? " and " : ", ") + std::to_string(absent[i]);
        if (absent.size() > kNamed) out += " and " + std::to_string(absent.size() - kNamed) + " more";
        out += std::string(" never joined the roll call, so whether ") + (absent.size() == 1 ? "it" : "they") +
               " entered it is unknown";
    }
    return out;
}

bool RollCall::enabled() {
    const char* v = std::getenv("TUNE_ROLL_CALL");
    return !(v && (std::strcmp(v, "off") == 0 || std::strcmp(v, "0") == 0));
}

RollCall::RollCall(int rank, int world, const std::string& rank0_address, double connect_s)
    : rank_(rank), world_(world), address_(rank0_address), connect_s_(connect_s), table_(world), why_(world) {
    if (rank_ == 0) {
        std::string host;
        int port = 0;
        if (const char* a = std::getenv("TUNE_ROLL_CALL_ADDR")) {
            if (!split_address(a, &host, &port))
                throw Error(std::string("roll call: TUNE_ROLL_CALL_ADDR='") + a + "' is not host, host:port, [IPv6] "
                            "or [IPv6]:port (a port from 0, any free one, to 65535)");
        } else if (const char* m = std::getenv("MASTER_ADDR")) {
            host = m;  // a host without a port; an IPv6 one may come in brackets, which join_address adds back
            if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
        } else {
            char name[256] = "";
            ::gethostname(name, sizeof name - 1);
            host = name;
        }
        int bound = 0;
        try {
            listen_ = listen_tcp(port, &bound);
        } catch (const Error& e) {
            throw Error(std::string("roll call: rank 0 ") + e.what() + " (TUNE_ROLL_CALL_ADDR sets the port; "
                        "TUNE_ROLL_CALL=off goes without)");
        }
        ::fcntl(listen_.fd, F_SETFL, ::fcntl(listen_.fd, F_GETFL, 0) | O_NONBLOCK);  // serve() accepts until EAGAIN
        raise_descriptor_limit(world_);
        address_ = join_address(host, bound);
        table_[0].state = RollEntry::State::alive;
        connected_ = true;
        thread_ = std::thread([this] { serve(); });
    } else {
        thread_ = std::thread([this] { report(); });
    }
}

RollCall::~RollCall() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
}

void RollCall::fail(const std::string& why) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        fail_why_ = one_line(why, 600);
    }
    failed_ = true;
    stop_ = true;
    if (thread_.joinable()) thread_.join();
}

uint64_t RollCall::enter(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    what_ = one_line(what);
    return ++seq_;
}

std::string RollCall::death() const {
    std::lock_guard<std::mutex> lock(mu_);
    return death_;
}

std::string RollCall::position_line() const {
    std::lock_guard<std::mutex> lock(mu_);
    return roll_line_text({RollLine::Kind::at, -1, seq_.load(), what_});
}

void RollCall::mark_gone(int r) {
    // The sentence every rank prints names the rank that went, where it was, and why, if it said.
    RollEntry& e = table_[r];
    e.state = RollEntry::State::gone;
    if (rank_ != 0 && !why_[r].empty()) e.why = why_[r];
    if (!death_.empty()) return;
    const bool known = rank_ == 0 || r != 0;  // only rank 0 knows where rank 0 was
    const std::string where = known ? " " + position(e.seq, e.what) : "";
    death_ = e.why.empty() ? "rank " + std::to_string(r) + " died" + where +
                                 ": its roll-call connection closed without a goodbye (killed or crashed)"
                           : "rank " + std::to_string(r) + " stopped" + where + ": " + e.why;
}

std::string RollCall::blame(uint64_t seq, double wait_s) {
    if (rank_ == 0) {  // and every other rank hears it too, before rank 0 stops on it
        const std::string v = verdict(seq);
        std::lock_guard<std::mutex> lock(mu_);
        outbox_.push_back(roll_line_text({RollLine::Kind::verdict, -1, seq, one_line(v, 2000)}));
        return v;
    }
    // A fresh verdict: asked now. One that came before the question (rank 0 told everyone as it stopped) is the
    // answer only once rank 0 is gone.
    std::unique_lock<std::mutex> lock(mu_);
    const double asked_at = steady_now_s();
    if (connected_) {
        asked_ = seq;
        verdict_cv_.wait_for(lock, std::chrono::duration<double>(wait_s), [&] {
            auto it = verdicts_.find(seq);
            return (it != verdicts_.end() && it->second.at >= asked_at) || !connected_;
        });
    }
    auto it = verdicts_.find(seq);
    if (it == verdicts_.end() || (connected_ && it->second.at < asked_at)) return "";
    return it->second.text;
}

// ---- rank 0 ----

std::string RollCall::verdict(uint64_t seq) {
    std::lock_guard<std::mutex> lock(mu_);
    table_[0].seq = seq_;
    table_[0].what = what_;
    table_[0].heard = steady_now_s();
    const std::string who = roll_call_blame(table_, seq, steady_now_s(), kSilent);
    return who.empty() ? kEveryRankEntered : who;
}

bool RollCall::handle_line(int from, const RollLine& l) {
    // Returns false for a line that makes no sense (the connection is then dropped).
    RollEntry& e = table_[from];
    e.heard = steady_now_s();
    switch (l.kind) {
        case RollLine::Kind::at: e.seq = l.seq, e.what = l.text; return true;
        case RollLine::Kind::stop: e.why = l.text; return true;
        case RollLine::Kind::bye: e.state = RollEntry::State::finished; return true;
        default: return false;  // "ask" is answered by serve(), outside the table; a second hello is no report
    }
}

void RollCall::serve() {
    struct Client {
        Fd fd;
        int rank = -1;  // until its hello
        std::string buf;
    };
    std::vector<Client> clients;
    auto tell_all = [&](const std::string& line) {
        for (Client& c : clients)
            if (c.rank > 0) send_line(c.fd, line);
    };
    auto send_outbox = [&] {
        std::vector<std::string> out;
        {
            std::lock_guard<std::mutex> lock(mu_);
            out.swap(outbox_);
        }
        for (const std::string& line : out) tell_all(line);
    };
    std::set<uint64_t> told;       // the collectives whose verdict every rank has had
    double accept_again = 0;       // out of descriptors: the listening socket rests until then
    bool warned_descriptors = false;
    while (!stop_) {
        send_outbox();
        const bool resting = steady_now_s() < accept_again;
        std::vector<pollfd> pfds{{resting ? -1 : listen_.fd, POLLIN, 0}};  // poll skips a negative descriptor
        for (Client& c : clients) pfds.push_back({c.fd.fd, POLLIN, 0});
        if (::poll(pfds.data(), pfds.size(), 50) <= 0) continue;
        // Everyone knocking at once (a thousand ranks at start-up) is let in by one pass, not one per poll: the
        // listening socket does not block, so accept() says EAGAIN when nobody is left.
        while (pfds[0].revents & POLLIN) {
            Fd c(::accept(listen_.fd, nullptr, nullptr));
            if (!c.ok()) {
                if (errno == EMFILE || errno == ENFILE) {  // else it would wake this loop at once, for ever
                    accept_again = steady_now_s() + 1;
                    if (!warned_descriptors)
                        std::fprintf(stderr, "rank 0: warning: the roll call is out of file descriptors (%s) with %zu "
                                     "ranks connected; raise `ulimit -n`\n", std::strerror(errno), clients.size());
                    warned_descriptors = true;
                }
                break;
            }
            limit_send_wait(c);  // Linux: an accepted socket does not inherit O_NONBLOCK, so it blocks as before
            clients.push_back({std::move(c), -1, ""});
        }
        for (size_t i = 0; i < clients.size(); i++) {
            if (!(pfds.size() > i + 1 && pfds[i + 1].revents)) continue;
            Client& c = clients[i];
            bool open = read_some(c.fd.fd, c.buf);
            for (const std::string& line : take_lines(c.buf)) {
                const RollLine l = parse_line_to_rank0(line, world_);
                if (c.rank < 0) {
                    // The first line says which rank this is. A rank connects once: a second connection that
                    // claims it (whoever it is) is hung up on, and the first keeps its place.
                    std::lock_guard<std::mutex> lock(mu_);
                    if (l.kind != RollLine::Kind::hello || table_[l.rank].state != RollEntry::State::absent) {
                        open = false;
                        break;
                    }
                    c.rank = l.rank;
                    table_[l.rank].state = RollEntry::State::alive;
                    table_[l.rank].heard = steady_now_s();
                    continue;
                }
                if (l.kind == RollLine::Kind::ask) {
                    // Every rank hears the first verdict on a collective (they may be unable to ask later, when
                    // rank 0 has stopped); later questions on it, from the others timing out, are answered to
                    // the asker alone, or a hang in a world of N would cost N^2 messages.
                    const std::string v =
                        roll_line_text({RollLine::Kind::verdict, -1, l.seq, one_line(verdict(l.seq), 2000)});
                    if (told.insert(l.seq).second)
                        tell_all(v);
                    else
                        send_line(c.fd, v);
                    continue;
                }
                std::lock_guard<std::mutex> lock(mu_);
                if (!handle_line(c.rank, l)) open = false;
            }
            // Our lines are short; a peer that sends 64 KB without a newline is not a rank, and is dropped.
            if (c.buf.size() > kLongestLine) open = false;
            if (open) continue;
            // Closed: a goodbye said, or a rank gone. Every rank hears of it before rank 0 acts on it.
            if (c.rank > 0) {
                std::string why, gone;
                {
                    std::lock_guard<std::mutex> lock(mu_);
                    const RollEntry& e = table_[c.rank];
                    if (e.state != RollEntry::State::finished) {
                        why = e.why;
                        gone = roll_line_text({RollLine::Kind::gone, c.rank, e.seq, e.what});
                    }
                }
                c.fd.reset();
                if (!gone.empty()) {
                    if (!why.empty()) tell_all(roll_line_text({RollLine::Kind::stop, c.rank, 0, why}));
                    tell_all(gone);
                    std::lock_guard<std::mutex> lock(mu_);
                    mark_gone(c.rank);
                }
            }
            clients.erase(clients.begin() + (long)i);
            pfds.erase(pfds.begin() + (long)i + 1);
            i--;
        }
        // TEACH: in a large world every collective brings a line from every rank; waking once per line would
        // keep this thread (and a core) busy. Pausing briefly lets the lines pile up and be read in one pass;
        // the verdict waits for --comm-timeout anyway, so 20 ms of delay costs nothing.
        if (world_ > kBatchFromWorld) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    send_outbox();
    if (failed_) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!fail_why_.empty()) tell_all(roll_line_text({RollLine::Kind::stop, 0, 0, fail_why_}));
    } else {
        tell_all(roll_line_text({RollLine::Kind::bye}));
    }
    clients.clear();
    listen_.reset();
}

// ---- the other ranks ----

void RollCall::take_line(const std::string& line, bool* bye) {
    const RollLine l = parse_line_from_rank0(line, world_);
    switch (l.kind) {
        case RollLine::Kind::bye: *bye = true; break;
        case RollLine::Kind::verdict:
            verdicts_[l.seq] = {l.text, steady_now_s()};
            if (verdicts_.size() > 16) verdicts_.erase(verdicts_.begin());
            verdict_cv_.notify_all();
            break;
        case RollLine::Kind::stop: why_[l.rank] = l.text; break;
        case RollLine::Kind::gone:
            table_[l.rank].seq = l.seq;
            table_[l.rank].what = l.text;
            mark_gone(l.rank);
            break;
        default: break;  // not a line of rank 0's: passed over (a later version's, perhaps)
    }
}

void RollCall::report() {
    std::string host, why = "no attempt";
    int port = 0;
    const bool parsed = split_address(address_, &host, &port) && port > 0;
    if (!parsed) why = "not an address with a port";
    const double deadline = steady_now_s() + connect_s_;
    while (parsed && !stop_ && steady_now_s() < deadline) {
        up_ = connect_tcp(host, port, 1.0, &why);
        if (up_.ok()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (up_.ok()) limit_send_wait(up_);
    if (!up_.ok() || !send_line(up_, roll_line_text({RollLine::Kind::hello, rank_}))) {
        if (!stop_)
            std::fprintf(stderr,
                         "rank %d: warning: cannot reach rank 0's roll call at %s (%s): a rank that hangs or dies "
                         "will stop the job at --comm-timeout, without being named\n",
                         rank_, address_.c_str(), why.c_str());
        up_.reset();
        return;
    }
    connected_ = true;
    std::string buf, sent;
    double last = 0;
    bool bye = false;
    while (!stop_) {
        const std::string now_at = position_line();
        const double now = steady_now_s();
        uint64_t ask = 0;
        {
            std::lock_guard<std::mutex> lock(mu_);
            std::swap(ask, asked_);
        }
        if ((now_at != sent && now - last >= kReportEvery) || now - last >= kHeartbeat) {
            send_line(up_, now_at);
            sent = now_at, last = now;
        }
        if (ask) send_line(up_, roll_line_text({RollLine::Kind::ask, -1, ask}));
        if (!wait_fd(up_.fd, false, steady_now_s() + 0.05)) continue;
        const bool open = read_some(up_.fd, buf);
        std::lock_guard<std::mutex> lock(mu_);
        for (const std::string& line : take_lines(buf)) take_line(line, &bye);
        if (open) continue;
        connected_ = false;
        if (!bye) mark_gone(0);
        verdict_cv_.notify_all();
        up_.reset();
        return;
    }
    if (failed_) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!fail_why_.empty()) send_line(up_, roll_line_text({RollLine::Kind::stop, -1, 0, fail_why_}));
    } else {
        send_line(up_, roll_line_text({RollLine::Kind::bye}));
    }
    up_.reset();  // now, not at destruction: a failing rank's silence must reach rank 0 at once
}

}  // namespace tune
