#include "train/socket.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "kernels/common.h"

namespace tune {

double steady_now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Fd& Fd::operator=(Fd&& o) noexcept {
    if (this != &o) {
        reset();
        fd = o.fd;
        o.fd = -1;
    }
    return *this;
}

void Fd::reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

bool send_all(int fd, const char* p, size_t n) {
    while (n) {
        const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k, n -= (size_t)k;
    }
    return true;
}

bool wait_fd(int fd, bool out, double deadline) {
    for (;;) {
        const double left = deadline - steady_now_s();
        if (left <= 0) return false;
        pollfd pfd{fd, (short)(out ? POLLOUT : POLLIN), 0};
        const int k = ::poll(&pfd, 1, (int)std::min(left * 1000.0 + 1, 1000.0));
        if (k > 0) return true;
        if (k < 0 && errno != EINTR) return false;
    }
}

Fd listen_tcp(int port, int* bound_port) {
    Fd srv(::socket(AF_INET6, SOCK_STREAM, 0));
    const bool v6 = srv.ok();
    if (!v6) srv = Fd(::socket(AF_INET, SOCK_STREAM, 0));
    if (!srv.ok()) throw Error(std::string("socket: ") + std::strerror(errno));
    int one = 1, zero = 0;
    ::setsockopt(srv.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc;
    if (v6) {
        ::setsockopt(srv.fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);  // IPv4 clients too
        sockaddr_in6 a{};
        a.sin6_family = AF_INET6;
        a.sin6_addr = in6addr_any;
        a.sin6_port = htons((uint16_t)port);
        rc = ::bind(srv.fd, (sockaddr*)&a, sizeof a);
    } else {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_ANY);
        a.sin_port = htons((uint16_t)port);
        rc = ::bind(srv.fd, (sockaddr*)&a, sizeof a);
    }
    if (rc != 0 || ::listen(srv.fd, SOMAXCONN) != 0)  // a thousand ranks may knock at once
        throw Error("cannot listen on port " + std::to_string(port) + ": " + std::strerror(errno));
    sockaddr_storage got{};
    socklen_t len = sizeof got;
    ::getsockname(srv.fd, (sockaddr*)&got, &len);
    *bound_port = ntohs(got.ss_family == AF_INET6 ? ((sockaddr_in6*)&got)->sin6_port : ((sockaddr_in*)&got)->sin_port);
    return srv;
}

Fd connect_tcp(const std::string& host, int port, double seconds, std::string* why) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    const int g = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (g != 0) {
        *why = "cannot resolve " + host + ": " + ::gai_strerror(g);
        return Fd();
    }
    *why = "no address of " + host;
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        Fd s(::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol));
        if (!s.ok()) continue;
        // Non-blocking connect, so an unreachable host costs `seconds`, not the kernel's minutes of SYN retries.
        const int flags = ::fcntl(s.fd, F_GETFL, 0);
        ::fcntl(s.fd, F_SETFL, flags | O_NONBLOCK);
        int rc = ::connect(s.fd, ai->ai_addr, ai->ai_addrlen);
        int err = rc == 0 ? 0 : errno;  // saved before anything else can change errno
        if (err == EINPROGRESS) {
            if (wait_fd(s.fd, true, steady_now_s() + seconds)) {
                socklen_t len = sizeof err;
                ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            } else {
                err = ETIMEDOUT;
            }
        }
        if (err != 0) {
            *why = std::string("connect: ") + std::strerror(err);
            continue;
        }
        ::fcntl(s.fd, F_SETFL, flags);
        int one = 1;
        ::setsockopt(s.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::freeaddrinfo(res);
        return s;
    }
    ::freeaddrinfo(res);
    return Fd();
}

}  // namespace tune
