// Unit tests for mapping.hpp: parse_mapping.
#include "mapping.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "errors.hpp"

using bunce::InvalidMapping;
using bunce::MappingItem;
using bunce::parse_mapping;

namespace {

using Field = std::pair<std::string, std::string>;  // key, column

std::set<Field> fields_of(const std::vector<MappingItem> &items) {
    std::set<Field> out;
    for (const auto &i : items)
        if (i.kind == MappingItem::field) out.insert({i.key, i.column});
    return out;
}

// Checks that begin/end brackets balance and that no field appears at depth < 0.
void expect_balanced(const std::vector<MappingItem> &items) {
    int depth = 0;
    for (const auto &i : items) {
        if (i.kind == MappingItem::begin_object) {
            EXPECT_FALSE(i.key.empty());
            EXPECT_TRUE(i.column.empty());
            depth++;
        } else if (i.kind == MappingItem::end_object) {
            EXPECT_TRUE(i.key.empty());
            EXPECT_TRUE(i.column.empty());
            depth--;
            ASSERT_GE(depth, 0);
        } else {
            EXPECT_FALSE(i.key.empty());
            EXPECT_FALSE(i.column.empty());
        }
    }
    EXPECT_EQ(depth, 0);
}

// The fields between the begin_object named `key` (at depth 0) and its end_object.
std::set<Field> fields_inside(const std::vector<MappingItem> &items, const std::string &key) {
    std::set<Field> out;
    size_t i = 0;
    int depth = 0;
    for (; i < items.size(); i++) {
        if (items[i].kind == MappingItem::begin_object && depth == 0 && items[i].key == key) break;
        if (items[i].kind == MappingItem::begin_object) depth++;
        if (items[i].kind == MappingItem::end_object) depth--;
    }
    EXPECT_LT(i, items.size()) << "no begin_object " << key;
    depth = 0;
    for (i++; i < items.size(); i++) {
        if (items[i].kind == MappingItem::end_object && depth == 0) return out;
        if (items[i].kind == MappingItem::begin_object) depth++;
        if (items[i].kind == MappingItem::end_object) depth--;
        if (items[i].kind == MappingItem::field && depth == 0) out.insert({items[i].key, items[i].column});
    }
    ADD_FAILURE() << "begin_object " << key << " is never closed";
    return out;
}

// Fields outside any nested object.
std::set<Field> top_level_fields(const std::vector<MappingItem> &items) {
    std::set<Field> out;
    int depth = 0;
    for (const auto &i : items) {
        if (i.kind == MappingItem::begin_object)
            depth++;
        else if (i.kind == MappingItem::end_object)
            depth--;
        else if (depth == 0)
            out.insert({i.key, i.column});
    }
    return out;
}

void expect_invalid(const std::string &text, const std::string &in_message = "") {
    SCOPED_TRACE("mapping: " + text);
    try {
        parse_mapping(text);
        ADD_FAILURE() << "accepted";
    } catch (const InvalidMapping &e) {
        EXPECT_FALSE(e.hint().empty());
        if (!in_message.empty()) {
            EXPECT_NE(std::string(e.what()).find(in_message), std::string::npos) << e.what();
        }
    } catch (const std::exception &e) {
        ADD_FAILURE() << "threw something else: " << e.what();
    }
}

}  // namespace

TEST(ParseMapping, Flat) {
    const auto items = parse_mapping(R"({"email": "customer_email", "amount": "total"})");
    ASSERT_EQ(items.size(), 2u);
    expect_balanced(items);
    EXPECT_EQ(fields_of(items), (std::set<Field>{{"email", "customer_email"}, {"amount", "total"}}));
}

TEST(ParseMapping, SingleField) {
    const auto items = parse_mapping(R"({"email":"e"})");
    ASSERT_EQ(items.size(), 1u);
    EXPECT_EQ(items[0].kind, MappingItem::field);
    EXPECT_EQ(items[0].key, "email");
    EXPECT_EQ(items[0].column, "e");
}

TEST(ParseMapping, NestedCustomer) {
    const auto items = parse_mapping(
        R"({"email": "customer_email", "amount": "total",
            "customer": {"customer_id": "cust_id", "first_name": "fname"}})");
    ASSERT_EQ(items.size(), 6u);  // 2 fields, begin, 2 fields, end
    expect_balanced(items);
    EXPECT_EQ(top_level_fields(items), (std::set<Field>{{"email", "customer_email"}, {"amount", "total"}}));
    EXPECT_EQ(fields_inside(items, "customer"), (std::set<Field>{{"customer_id", "cust_id"}, {"first_name", "fname"}}));
    // Bracketing: the begin_object is directly followed by the customer's fields and the
    // end_object directly after them.
    size_t begin = 0;
    while (begin < items.size() && items[begin].kind != MappingItem::begin_object) begin++;
    ASSERT_LT(begin + 3, items.size());
    EXPECT_EQ(items[begin].key, "customer");
    EXPECT_EQ(items[begin + 1].kind, MappingItem::field);
    EXPECT_EQ(items[begin + 2].kind, MappingItem::field);
    EXPECT_EQ(items[begin + 3].kind, MappingItem::end_object);
}

TEST(ParseMapping, DeeplyNested) {
    const auto items = parse_mapping(R"({"a": {"b": {"c": "col_c"}, "d": "col_d"}, "e": "col_e"})");
    expect_balanced(items);
    ASSERT_EQ(items.size(), 7u);  // begin a, begin b, c, end, d, end, e (keys sorted)
    EXPECT_EQ(top_level_fields(items), (std::set<Field>{{"e", "col_e"}}));
    EXPECT_EQ(fields_inside(items, "a"), (std::set<Field>{{"d", "col_d"}}));
    EXPECT_EQ(fields_of(items), (std::set<Field>{{"c", "col_c"}, {"d", "col_d"}, {"e", "col_e"}}));
}

TEST(ParseMapping, SameColumnTwice) {
    const auto items = parse_mapping(R"({"email": "e", "customer": {"email": "e"}})");
    expect_balanced(items);
    EXPECT_EQ(top_level_fields(items), (std::set<Field>{{"email", "e"}}));
    EXPECT_EQ(fields_inside(items, "customer"), (std::set<Field>{{"email", "e"}}));
}

TEST(ParseMapping, ColumnNamesKeptVerbatim) {
    const auto items = parse_mapping(R"({"Amount Due": "Total \"Gross\"", "x": " spaced "})");
    EXPECT_EQ(fields_of(items), (std::set<Field>{{"Amount Due", "Total \"Gross\""}, {"x", " spaced "}}));
}

TEST(ParseMapping, NotJson) {
    expect_invalid("", "JSON");
    expect_invalid("not json", "JSON");
    expect_invalid("{", "JSON");
    expect_invalid(R"({"email": "e",})", "JSON");
    expect_invalid("{'email': 'e'}", "JSON");
}

TEST(ParseMapping, NotAnObject) {
    expect_invalid(R"(["email", "e"])", "object");
    expect_invalid(R"("email")", "object");
    expect_invalid("42", "object");
    expect_invalid("null", "object");
    expect_invalid("true", "object");
}

TEST(ParseMapping, EmptyObjects) {
    expect_invalid("{}", "empty");
    expect_invalid(R"({"email": "e", "customer": {}})", "empty");
    expect_invalid(R"({"email": "e", "customer": {}})", "customer");
}

TEST(ParseMapping, EmptyColumnName) {
    expect_invalid(R"({"email": ""})", "\"email\"");
    expect_invalid(R"({"customer": {"customer_id": ""}})", "\"customer_id\"");
}

TEST(ParseMapping, ValuesThatAreNotColumnNames) {
    expect_invalid(R"({"amount": 5})", "\"amount\"");
    expect_invalid(R"({"amount": 1.5})", "\"amount\"");
    expect_invalid(R"({"amount": ["total"]})", "\"amount\"");
    expect_invalid(R"({"amount": []})", "\"amount\"");
    expect_invalid(R"({"amount": null})", "\"amount\"");
    expect_invalid(R"({"amount": true})", "\"amount\"");
    expect_invalid(R"({"email": "e", "customer": {"customer_id": 7}})", "\"customer_id\"");
}

TEST(ParseMapping, DeepNestingIsRefusedNotACrash) {
    auto nested = [](size_t levels) {
        std::string s;
        for (size_t i = 0; i < levels; i++) s += "{\"a\":";
        s += "\"col\"";
        return s + std::string(levels, '}');
    };
    EXPECT_NO_THROW(parse_mapping(nested(bunce::kMaxMappingDepth)));
    EXPECT_THROW(parse_mapping(nested(bunce::kMaxMappingDepth + 1)), InvalidMapping);
    EXPECT_THROW(parse_mapping(nested(40000)), InvalidMapping);
}
