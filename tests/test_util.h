// Helpers shared by the test suites: random fills, NaN poisoning, one tolerance check that prints the
// first mismatching elements, and central finite differences in double.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "model/rng.h"

namespace tune::test {

inline std::vector<double> randn(size_t n, uint64_t seed, double scale = 1.0) {
    Rng r(seed);
    std::vector<double> v(n);
    for (auto& x : v) x = r.normal() * scale;
    return v;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
    return std::vector<T>(v.begin(), v.end());
}

template <class T>
void poison(std::vector<T>& v) {
    std::fill(v.begin(), v.end(), std::numeric_limits<T>::quiet_NaN());
}

// Checks ||got - want||_inf / max(||want||_inf, floor) <= tol. On failure prints the first few
// elements that exceed the tolerance with both values.
template <class A, class B>
::testing::AssertionResult near_rel(const std::vector<A>& got, const std::vector<B>& want, double tol,
                                    double floor = 1e-30) {
    if (got.size() != want.size())
        return ::testing::AssertionFailure() << "size " << got.size() << " vs " << want.size();
    double maxw = 0, maxd = 0;
    for (size_t i = 0; i < want.size(); i++) maxw = std::max(maxw, std::fabs((double)want[i]));
    const double denom = std::max(maxw, floor);
    for (size_t i = 0; i < got.size(); i++) {
        double d = std::fabs((double)got[i] - (double)want[i]);
        if (std::isnan(d)) d = INFINITY;
        maxd = std::max(maxd, d);
    }
    if (maxd / denom <= tol) return ::testing::AssertionSuccess();
    auto f = ::testing::AssertionFailure();
    f << "max |got - want| / max|want| = " << maxd / denom << " > " << tol << " (max|want| = " << maxw << ")";
    int shown = 0;
    for (size_t i = 0; i < got.size() && shown < 5; i++) {
        double d = std::fabs((double)got[i] - (double)want[i]);
        if (!(d / denom <= tol)) {
            f << "\n  [" << i << "] got " << (double)got[i] << " want " << (double)want[i];
            shown++;
        }
    }
    return f;
}

// Central difference of f with respect to x[i], for every i (or the given indices), in double.
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& f, double h = 1e-5) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        const double old = x[i];
        x[i] = old + h;
        const double fp = f();
        x[i] = old - h;
        const double fm = f();
        x[i] = old;
        g[i] = (fp - fm) / (2 * h);
    }
    return g;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

}  // namespace tune::test
