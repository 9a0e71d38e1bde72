// Unit tests for database_list.hpp.
#include "database_list.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

std::vector<std::string> parse(const std::string &text) {
    std::vector<std::string> names;
    std::string problem;
    EXPECT_TRUE(bunce::parse_database_list(text, 64, 63, names, problem)) << text << ": " << problem;
    return names;
}

std::string refused(const std::string &text) {
    std::vector<std::string> names;
    std::string problem;
    EXPECT_FALSE(bunce::parse_database_list(text, 4, 63, names, problem)) << text;
    return problem;
}

using Names = std::vector<std::string>;

}  // namespace

TEST(DatabaseList, OneName) {
    EXPECT_EQ(parse("postgres"), Names{"postgres"});
    EXPECT_EQ(parse("  shop  "), Names{"shop"});
}

TEST(DatabaseList, SeveralNamesAsWritten) {
    EXPECT_EQ(parse("shop,billing"), (Names{"shop", "billing"}));
    EXPECT_EQ(parse("shop, Billing ,\tcrm"), (Names{"shop", "Billing", "crm"}));  // case is kept
    EXPECT_EQ(parse("my shop,b"), (Names{"my shop", "b"}));                       // inner spaces too
    EXPECT_EQ(parse("Shop,shop"), (Names{"Shop", "shop"}));                       // two databases
}

TEST(DatabaseList, QuotedNames) {
    EXPECT_EQ(parse("\"a,b\", c"), (Names{"a,b", "c"}));
    EXPECT_EQ(parse("\" padded \""), Names{" padded "});
    EXPECT_EQ(parse("\"say \"\"hi\"\"\""), Names{"say \"hi\""});
    EXPECT_EQ(parse("x , \"y\" ,z"), (Names{"x", "y", "z"}));
}

TEST(DatabaseList, Refused) {
    EXPECT_EQ(refused(""), "no database is named");
    EXPECT_EQ(refused("   "), "no database is named");
    EXPECT_EQ(refused("a,,b"), "the list has an empty name");
    EXPECT_EQ(refused("a,"), "the list has an empty name");
    EXPECT_EQ(refused(",a"), "the list has an empty name");
    EXPECT_EQ(refused("\"\""), "the list has an empty name");
    EXPECT_EQ(refused("\"open"), "a quoted name has no closing quote");
    EXPECT_EQ(refused("\"a\"b"), "a quoted name must be followed by a comma or the end of the list");
    EXPECT_EQ(refused("a\"b\""), "a double quote may only begin a name");
    EXPECT_EQ(refused("shop, shop"), "database \"shop\" is listed twice");
    EXPECT_EQ(refused("shop, \"shop\""), "database \"shop\" is listed twice");
    EXPECT_EQ(refused("a,b,c,d,e"), "more than 4 databases are listed");
    EXPECT_NE(refused(std::string(64, 'x')).find("longer than a database name"), std::string::npos);
    EXPECT_EQ(parse(std::string(63, 'x')), Names{std::string(63, 'x')});
    // The name quoted in the message is cut at a character, not inside one.
    std::string long_name;
    for (int i = 0; i < 40; i++) long_name += "\xc3\xa9";  // é
    EXPECT_EQ(refused(long_name),
              "the name \"" + long_name.substr(0, 62) + "...\" is longer than a database name can be");
}
