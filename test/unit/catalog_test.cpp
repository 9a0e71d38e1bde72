// Unit tests for catalog.hpp: reading GET /v1/events pages.
#include "catalog.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

using bunce::events_page_url;
using bunce::parse_events_page;

TEST(EventsPage, ReadsEventsAndTheNextCursor) {
    const auto page = parse_events_page(R"({"success": true, "message": "ok", "data": [
        {"id": "9BB6215C-E2B1-4E51-ABFF-3A96CA185088", "company_id": "x", "name": "order paid",
         "description": "An order was paid",
         "parameters": [{"name": "amount", "type": "Numeric", "required": true},
                        {"name": "paid_at", "type": "timestamp", "required": false}]},
        {"id": "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "name": "signed up", "parameters": null}],
        "meta": {"has_next_page": true, "has_prev_page": false, "next_page_cursor": "abc=", "per_page": 2}})");
    ASSERT_EQ(page.events.size(), 2u);
    EXPECT_EQ(page.events[0].id, "9bb6215c-e2b1-4e51-abff-3a96ca185088");
    EXPECT_EQ(page.events[0].name, "order paid");
    EXPECT_EQ(page.events[0].description, "An order was paid");
    EXPECT_NE(page.events[0].parameters.find("\"Numeric\""), std::string::npos) << "kept as Bunce wrote it";
    EXPECT_EQ(page.events[1].parameters, "[]");
    EXPECT_EQ(page.events[1].description, "");
    EXPECT_TRUE(page.has_next_page);
    EXPECT_EQ(page.next_page_cursor, "abc=");
}

TEST(EventsPage, LastPage) {
    const auto page = parse_events_page(R"({"success": true, "data": [], "meta": {"has_next_page": false}})");
    EXPECT_TRUE(page.events.empty());
    EXPECT_FALSE(page.has_next_page);
    EXPECT_FALSE(parse_events_page(R"({"data": []})").has_next_page);
}

TEST(EventsPage, RefusesWhatItCannotUse) {
    for (
        const char *body : {
            "",
            "not json",
            "[]",
            R"({"data": {}})",
            R"({"data": [1]})",
            R"({"data": [{"id": "nope", "name": "x"}]})",
            R"({"data": [{"id": "9bb6215c-e2b1-4e51-abff-3a96ca185088"}]})",
            R"({"data": [{"id": "9bb6215c-e2b1-4e51-abff-3a96ca185088", "name": "x", "parameters": {}}]})",
            R"({"data": [{"id": "9bb6215c-e2b1-4e51-abff-3a96ca185088", "name": "x", "parameters": [{"name": "a", "type": "date"}]}]})",
            R"({"data": [{"id": "9bb6215c-e2b1-4e51-abff-3a96ca185088", "name": "x", "parameters": [{"type": "text"}]}]})",
            R"({"data": [{"id": "9bb6215c-e2b1-4e51-abff-3a96ca185088", "name": "x", "parameters": [{"name": "a", "type": "text", "required": "yes"}]}]})",
            R"({"data": [], "meta": {"has_next_page": true}})",
        }) {
        SCOPED_TRACE(body);
        EXPECT_THROW(parse_events_page(body), std::runtime_error);
    }
}

TEST(EventsPage, UrlEncodesTheCursor) {
    EXPECT_EQ(events_page_url("http://127.0.0.1:1/v1", ""), "http://127.0.0.1:1/v1/events?per_page=100");
    EXPECT_EQ(events_page_url("https://api.bunce.so/v1", "a+b/c=&d"),
              "https://api.bunce.so/v1/events?per_page=100&cursor=a%2Bb%2Fc%3D%26d");
}

TEST(EventsPage, JsonOfASyncKeepsEachIdOnce) {
    std::vector<bunce::EventDefinition> events = {
        {"9bb6215c-e2b1-4e51-abff-3a96ca185088", "old name", "", "[]"},
        {"aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "b", "d", R"([{"name":"x","type":"text","required":true}])"},
        {"9bb6215c-e2b1-4e51-abff-3a96ca185088", "new name", "", "[]"}};
    const std::string json = bunce::events_json(events);
    EXPECT_EQ(json.find("old name"), std::string::npos) << json;
    EXPECT_NE(json.find("new name"), std::string::npos) << json;
    EXPECT_NE(json.find(R"("parameters":[{"name":"x","required":true,"type":"text"}])"), std::string::npos) << json;
}

TEST(EventParameters, ReadAsStored) {
    const auto p = bunce::parse_parameters(
        R"([{"name": "amount", "type": "Numeric", "required": true}, {"name": "at", "type": "TIMESTAMP"},
            {"name": "note", "type": "text", "required": null}])");
    ASSERT_EQ(p.size(), 3u);
    EXPECT_EQ(p[0].name, "amount");
    EXPECT_EQ(p[0].type, bunce::EventParameter::numeric);
    EXPECT_TRUE(p[0].required);
    EXPECT_EQ(p[1].type, bunce::EventParameter::timestamp);
    EXPECT_FALSE(p[1].required);
    EXPECT_EQ(p[2].type, bunce::EventParameter::text);
    EXPECT_FALSE(p[2].required);
    EXPECT_THROW(bunce::parse_parameters("{}"), std::runtime_error);
}

TEST(EventParameters, Checks) {
    using bunce::check_parameter;
    using bunce::EventParameter;
    using bunce::ParameterCheck;
    using V = bunce::ParameterValue;
    const EventParameter amount{"amount", EventParameter::numeric, true};
    const EventParameter at{"at", EventParameter::timestamp, false};
    const EventParameter note{"note", EventParameter::text, false};
    auto result = [](const ParameterCheck &c) { return c.result; };

    auto missing = check_parameter("order paid", amount, {V::absent, {}});
    EXPECT_EQ(missing.result, ParameterCheck::refused);
    EXPECT_NE(missing.message.find("\"order paid\""), std::string::npos) << missing.message;
    EXPECT_NE(missing.message.find("\"amount\""), std::string::npos) << missing.message;
    EXPECT_FALSE(missing.hint.empty());
    EXPECT_EQ(result(check_parameter("e", amount, {V::null, {}})), ParameterCheck::refused);
    EXPECT_EQ(result(check_parameter("e", at, {V::absent, {}})), ParameterCheck::ok) << "optional";

    for (const char *n : {"12", "-1.5", "120.50", "1e3"}) {
        EXPECT_EQ(result(check_parameter("e", amount, {V::number, n})), ParameterCheck::ok) << n;
        EXPECT_EQ(result(check_parameter("e", amount, {V::string, n})), ParameterCheck::ok) << n;
    }
    for (const char *s : {"", "twelve", "12 ", "+1", ".5", "1.", "0x10", "1e"})
        EXPECT_EQ(result(check_parameter("e", amount, {V::string, s})), ParameterCheck::refused) << s;
    EXPECT_EQ(result(check_parameter("e", amount, {V::boolean, "true"})), ParameterCheck::refused);
    EXPECT_EQ(result(check_parameter("e", amount, {V::container, {}})), ParameterCheck::refused);

    EXPECT_EQ(result(check_parameter("e", at, {V::string, "2024-05-01T10:00:00Z"})), ParameterCheck::ok);
    auto moved = check_parameter("e", at, {V::string, "2024-05-01T12:00:00.9+02:00"});
    EXPECT_EQ(moved.result, ParameterCheck::replace);
    EXPECT_EQ(moved.value, "2024-05-01T10:00:00Z");
    auto day = check_parameter("e", at, {V::string, "2024-05-01"});
    EXPECT_EQ(day.result, ParameterCheck::replace);
    EXPECT_EQ(day.value, "2024-05-01T00:00:00Z");
    EXPECT_EQ(result(check_parameter("e", at, {V::string, "2024-05-01 10:00:00"})), ParameterCheck::local_time);
    for (const char *s : {"yesterday", "2024-02-30", "2024-05-01T10:00:00+25:00", "1714557600"})
        EXPECT_EQ(result(check_parameter("e", at, {V::string, s})), ParameterCheck::refused) << s;
    EXPECT_EQ(result(check_parameter("e", at, {V::string, "10000-01-01T00:00:00Z"})), ParameterCheck::refused);
    EXPECT_EQ(result(check_parameter("e", at, {V::number, "1714557600"})), ParameterCheck::refused);

    EXPECT_EQ(result(check_parameter("e", note, {V::number, "1"})), ParameterCheck::ok) << "text takes anything";
}

// What a hostile or broken answer may hold is refused before it is parsed or stored.
TEST(EventsPage, RefusesWhatCouldHurt) {
    const std::string ev = R"({"id": "9bb6215c-e2b1-4e51-abff-3a96ca185088", "name": )";
    const std::string deep = std::string(200000, '[') + std::string(200000, ']');
    for (const std::string &body : {
             R"({"data": [)" + ev + R"("x", "parameters": [{"name": "a", "type": "text", "x": )" + deep + "}]}]}",
             R"({"data": [)" + ev + R"("a\u0000b"}]})",
             R"({"data": [)" + ev + "\"" + std::string(1001, 'n') + "\"}]}",
             R"({"data": [)" + ev + R"("x", "description": ")" + std::string(10001, 'd') + "\"}]}",
         }) {
        EXPECT_THROW(parse_events_page(body), std::runtime_error) << body.substr(0, 120);
    }
}
