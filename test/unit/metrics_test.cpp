// Unit tests for metrics.hpp.
#include "metrics.hpp"

#include <gtest/gtest.h>

#include <string>

using bunce::answer_class;
using bunce::AnswerClass;

TEST(Metrics, AnswerClasses) {
    auto label = [](long status, bool timed_out = false) {
        return std::string(bunce::answer_class_label(answer_class(status, timed_out)));
    };
    EXPECT_EQ(label(200), "2xx");
    EXPECT_EQ(label(202), "2xx");
    EXPECT_EQ(label(401), "401");
    EXPECT_EQ(label(403), "401");
    EXPECT_EQ(label(429), "429");
    EXPECT_EQ(label(400), "4xx");
    EXPECT_EQ(label(404), "4xx");
    EXPECT_EQ(label(408), "4xx");
    EXPECT_EQ(label(422), "4xx");
    EXPECT_EQ(label(500), "5xx");
    EXPECT_EQ(label(503), "5xx");
    EXPECT_EQ(label(302), "5xx");  // not an answer Bunce gives: the server misbehaves
    EXPECT_EQ(label(0, true), "timeout");
    EXPECT_EQ(label(0, false), "connection");
    EXPECT_EQ(label(200, true), "2xx");  // an answer is an answer
}

TEST(Metrics, LatencyBuckets) {
    EXPECT_EQ(bunce::latency_bucket(0), 0);
    EXPECT_EQ(bunce::latency_bucket(-1), 0);     // a clock step back
    EXPECT_EQ(bunce::latency_bucket(0.005), 0);  // "le": the bound itself is in
    EXPECT_EQ(bunce::latency_bucket(0.0051), 1);
    EXPECT_EQ(bunce::latency_bucket(1), 7);
    EXPECT_EQ(bunce::latency_bucket(1800), bunce::kLatencyBuckets - 2);
    EXPECT_EQ(bunce::latency_bucket(1e9), bunce::kLatencyBuckets - 1);  // +Inf
    for (int b = 1; b < bunce::kLatencyBuckets - 1; b++)
        ASSERT_LT(bunce::kLatencyBounds[b - 1], bunce::kLatencyBounds[b]);
}
