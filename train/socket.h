// TCP plumbing for the two places where ranks talk outside MPI and NCCL: the rendezvous of an environment
// launch (train/dist.cpp) and the roll call that names a rank that hangs or dies (train/roll_call.cpp).
// Blocking sockets, poll() for every wait, MSG_NOSIGNAL on every send (a peer that went away is an error
// returned, never SIGPIPE).
#pragma once

#include <cstddef>
#include <string>

namespace tune {

// Seconds on a monotonic clock.
double steady_now_s();

// A socket closed when it goes out of scope.
struct Fd {
    int fd = -1;
    explicit Fd(int f = -1) : fd(f) {}
    ~Fd() { reset(); }
    Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
    Fd& operator=(Fd&& o) noexcept;
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    void reset();
    bool ok() const { return fd >= 0; }
};

// Sends all n bytes; false when the peer is gone (or the send fails otherwise).
bool send_all(int fd, const char* p, size_t n);

// Waits until fd is readable (or writable when `out`), at most until `deadline` (steady_now_s() time).
bool wait_fd(int fd, bool out, double deadline);

// Listens on `port` of every interface, IPv6 and IPv4 alike; port 0 takes any free one. Returns the port
// bound. Throws tune::Error naming the port when it cannot.
Fd listen_tcp(int port, int* bound_port);

// One connection attempt to host:port, each address the name resolves to in turn, each for at most
// `seconds`. On failure returns a closed Fd and says why in *why.
Fd connect_tcp(const std::string& host, int port, double seconds, std::string* why);

}  // namespace tune
