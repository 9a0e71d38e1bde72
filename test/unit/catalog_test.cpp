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
