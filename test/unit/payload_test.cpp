// Unit tests for payload.hpp: prepare_payload and is_valid_email.
#include "payload.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "errors.hpp"

using bunce::InvalidJson;
using bunce::InvalidPayload;
using bunce::is_valid_email;
using bunce::prepare_payload;
using nlohmann::json;

namespace {

// Expects prepare_payload(text) to throw InvalidPayload whose message contains `field`
// and whose hint is not empty.
void expect_refused(const std::string &text, const std::string &field) {
    SCOPED_TRACE("payload: " + text);
    try {
        prepare_payload(text);
        ADD_FAILURE() << "accepted, expected InvalidPayload naming " << field;
    } catch (const InvalidPayload &e) {
        EXPECT_NE(std::string(e.what()).find(field), std::string::npos)
            << "message \"" << e.what() << "\" does not name " << field;
        EXPECT_FALSE(e.hint().empty()) << "no hint for: " << e.what();
    } catch (const std::exception &e) {
        ADD_FAILURE() << "threw something else: " << e.what();
    }
}

void expect_accepted_unchanged(const std::string &text) {
    SCOPED_TRACE("payload: " + text);
    bunce::PreparedPayload p{true, "sentinel"};
    ASSERT_NO_THROW(p = prepare_payload(text));
    EXPECT_FALSE(p.changed);
}

}  // namespace

// ---------------------------------------------------------------- accepted shapes

TEST(PreparePayload, EmailOnly) {
    expect_accepted_unchanged(R"({"email": "ada@example.com"})");
    expect_accepted_unchanged(R"({"email": "ada@example.com", "amount": 120.5, "items": [1, 2]})");
}

TEST(PreparePayload, CustomerWithCustomerId) {
    expect_accepted_unchanged(R"({"customer": {"customer_id": "42"}})");
    expect_accepted_unchanged(R"({"customer": {"customer_id": "cus_9", "email": null}})");
}

TEST(PreparePayload, CustomerWithEmail) {
    expect_accepted_unchanged(R"({"customer": {"email": "ada@example.com"}})");
    expect_accepted_unchanged(R"({"customer": {"customer_id": null, "email": "ada@example.com"}})");
}

TEST(PreparePayload, EmailAndCustomer) {
    expect_accepted_unchanged(
        R"({"email": "ada@example.com",
            "customer": {"customer_id": "42", "email": "ada@example.com",
                         "first_name": "Ada", "last_name": "Lovelace", "phone_no": "+44 20 7946 0000"}})");
    // A null top-level email is ignored when a customer is there.
    expect_accepted_unchanged(R"({"email": null, "customer": {"customer_id": "42"}})");
    // A null customer is ignored when an email is there.
    expect_accepted_unchanged(R"({"email": "ada@example.com", "customer": null})");
}

TEST(PreparePayload, Devices) {
    expect_accepted_unchanged(
        R"({"customer": {"customer_id": "42",
                         "devices": [{"device_type": "ios", "device_token": "abc"},
                                     {"device_type": "android", "device_token": "def", "extra": 1}]}})");
    expect_accepted_unchanged(R"({"customer": {"customer_id": "42", "devices": []}})");
    expect_accepted_unchanged(R"({"customer": {"customer_id": "42", "devices": null}})");
}

TEST(PreparePayload, NumericCustomerIdBecomesString) {
    auto p = prepare_payload(R"({"customer": {"customer_id": 42}})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"customer": {"customer_id": "42"}})");

    p = prepare_payload(R"({"customer": {"customer_id": -7, "email": "ada@example.com"}})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"customer": {"customer_id": "-7", "email": "ada@example.com"}})");

    p = prepare_payload(R"({"customer": {"customer_id": 18446744073709551615}})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"customer": {"customer_id": "18446744073709551615"}})");

    p = prepare_payload(R"({"customer": {"customer_id": 0}})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"customer": {"customer_id": "0"}})");
}

TEST(PreparePayload, OnlyTheCustomersIdBecomesString) {
    auto p = prepare_payload(
        R"({"customer_id": 1, "x": {"customer_id": 2}, "customer": {"n": {"customer_id": 3}, "customer_id": 4}})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(
        p.json,
        R"({"customer_id": 1, "x": {"customer_id": 2}, "customer": {"n": {"customer_id": 3}, "customer_id": "4"}})");
}

TEST(PreparePayload, UnchangedPayloadKeepsChangedFalse) {
    auto p = prepare_payload(
        R"({"email": "ada@example.com", "at": "2024-05-01T10:00:00Z", "note": "2024-05-01",
            "local": "2024-05-01T10:00:00", "n": 1, "f": 1.5, "b": true, "z": null,
            "list": ["a", {"x": "2024-05-01T10:00:00Z"}]})");
    EXPECT_FALSE(p.changed);
    EXPECT_TRUE(p.json.empty());
}

// ---------------------------------------------------------------- timestamp normalisation

TEST(PreparePayload, NormalisesTopLevelTimestamp) {
    auto p = prepare_payload(R"({"email": "ada@example.com", "at": "2024-05-01T10:00:00+02:00"})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"email": "ada@example.com", "at": "2024-05-01T08:00:00Z"})");
}

TEST(PreparePayload, NormalisesNestedObjectsAndArrays) {
    auto p = prepare_payload(
        R"({"email": "ada@example.com",
            "at": "2024-05-01T10:00:00+02:00",
            "items": [{"when": "2024-05-01 10:00:00-01:00", "qty": 2}, "x", 3,
                      "2024-12-31T23:30:00-01:00", ["2024-03-01T01:00:00+02:00"]],
            "meta": {"deep": {"t": "2024-05-01T10:00:00.999Z", "keep": "2024-05-01T10:00:00Z"}},
            "customer": {"customer_id": "42", "signed_up": "2024-05-01T10:00+05:45"}})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json,
              R"({"email": "ada@example.com",
            "at": "2024-05-01T08:00:00Z",
            "items": [{"when": "2024-05-01T11:00:00Z", "qty": 2}, "x", 3,
                      "2025-01-01T00:30:00Z", ["2024-02-29T23:00:00Z"]],
            "meta": {"deep": {"t": "2024-05-01T10:00:00Z", "keep": "2024-05-01T10:00:00Z"}},
            "customer": {"customer_id": "42", "signed_up": "2024-05-01T10:00+05:45"}})");
}

// The customer's fields are identities: never rewritten, even when they look like a time.
// Escaped strings and keys are read as what they say.
TEST(PreparePayload, IdentitiesAreDataAndEscapesAreRead) {
    const std::string customer =
        R"({"customer_id": "2024-05-01 10:00:00+02", "email": "ada@example.com", "phone_no": "2024-05-01T10:00:00+02:00", )"
        R"("first_name": "2024-05-01T10:00Z", "devices": [{"device_type": "ios", "device_token": "2024-05-01T10:00:00+02:00"}]})";
    auto p = prepare_payload(R"({"customer": )" + customer + R"(, "at": "2024-05-01T10:00:00+02:00"})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"customer": )" + customer + R"(, "at": "2024-05-01T08:00:00Z"})");

    p = prepare_payload(R"({"email": "ada@example.com", "t": "2012-09-03T16:30:00+02:00"})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"email": "ada@example.com", "t": "2012-09-03T14:30:00Z"})");
    p = prepare_payload(R"({"customer": {"customer_id": 42}})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"customer": {"customer_id": "42"}})");
}

// A date-time that Bunce's form cannot hold would be dropped by Bunce: it is refused.
TEST(PreparePayload, DateTimeOutOfRangeIsRefused) {
    EXPECT_THROW(prepare_payload(R"({"email": "ada@example.com", "at": "10000-01-01T00:00:00+00:00"})"),
                 InvalidPayload);
    EXPECT_THROW(prepare_payload(R"({"email": "ada@example.com", "x": ["0001-01-01T00:30:00+01:00"]})"),
                 InvalidPayload);
    try {
        prepare_payload(R"({"email": "ada@example.com", "shipped": "586554-01-18T00:00:00+00:00"})");
    } catch (const InvalidPayload &e) {
        EXPECT_NE(std::string(e.what()).find("\"shipped\""), std::string::npos) << e.what();
    }
    // text that is no date-time is left alone
    EXPECT_FALSE(prepare_payload(R"({"email": "ada@example.com", "code": "10000-01-01"})").changed);
}

TEST(PreparePayload, NulByteIsNotJson) {
    using namespace std::string_literals;
    EXPECT_THROW(prepare_payload("{\"email\":\"a@b.co\"}\0\""s), InvalidJson);
    EXPECT_THROW(prepare_payload("{\"email\":\"a@b.co\"}\0,"s), InvalidJson);
}

TEST(PreparePayload, NumericIdAndTimestampTogether) {
    auto p = prepare_payload(R"({"customer": {"customer_id": 5}, "at": "2024-05-01T10:00:00+00:00"})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"customer": {"customer_id": "5"}, "at": "2024-05-01T10:00:00Z"})");
}

TEST(PreparePayload, NumbersKeepTheirExactTextWhenRewritten) {
    const std::string numbers =
        R"("a": 120.50, "b": 12345678901234567890123, "c": 0.1000000000000000000001, "d": -1E+2, "e": 1e30)";
    auto p = prepare_payload(R"({"email": "ada@example.com", "at": "2024-05-01T10:00:00+02:00", )" + numbers + "}");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, R"({"email": "ada@example.com", "at": "2024-05-01T08:00:00Z", )" + numbers + "}");
}

TEST(PreparePayload, NumberBeyondDoubleIsRefusedAsTooLarge) {
    expect_refused(R"({"email": "ada@example.com", "n": 1e400})", "number too large");
}

TEST(PreparePayload, EscapedStringsAreCopiedAsTheyAre) {
    auto p = prepare_payload(
        R"({"email": "ada@example.com", "q": "say \"2024-05-01T10:00:00+02:00\"", "at": "2024-05-01T10:00:00+02:00", "k\"x": "2024-05-01T10:00:00+02:00"})");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(
        p.json,
        R"({"email": "ada@example.com", "q": "say \"2024-05-01T10:00:00+02:00\"", "at": "2024-05-01T08:00:00Z", "k\"x": "2024-05-01T08:00:00Z"})");
}

TEST(PreparePayload, KeysAreNeverRewritten) {
    expect_accepted_unchanged(R"({"email": "ada@example.com", "2024-05-01T10:00:00+02:00": 1})");
}

TEST(PreparePayload, UnicodeSurvivesRewrite) {
    auto p = prepare_payload(
        "{\"email\": \"ada@example.com\", \"name\": \"Zo\xc3\xab\", \"at\": \"2024-05-01T10:00:00+01:00\"}");
    EXPECT_TRUE(p.changed);
    EXPECT_EQ(p.json, "{\"email\": \"ada@example.com\", \"name\": \"Zo\xc3\xab\", \"at\": \"2024-05-01T09:00:00Z\"}");
}

// ---------------------------------------------------------------- refused shapes

TEST(PreparePayload, NonObjectPayload) {
    expect_refused("[1, 2]", "array");
    expect_refused("[]", "array");
    expect_refused(R"("ada@example.com")", "string");
    expect_refused("42", "number");
    expect_refused("1.5", "number");
    expect_refused("true", "boolean");
    expect_refused("null", "null");
    for (const char *t : {"[1]", "\"s\"", "42", "null"}) expect_refused(t, "payload");
}

TEST(PreparePayload, NoEmailAndNoCustomer) {
    expect_refused("{}", "\"email\"");
    expect_refused(R"({"amount": 5})", "\"customer\"");
    expect_refused(R"({"email": null})", "\"email\"");
    expect_refused(R"({"email": null, "customer": null})", "\"customer\"");
    expect_refused(R"({"Email": "ada@example.com"})", "\"email\"");
}

TEST(PreparePayload, EmailNotAString) {
    expect_refused(R"({"email": 42})", "\"email\"");
    expect_refused(R"({"email": ["ada@example.com"]})", "\"email\"");
    expect_refused(R"({"email": {"address": "ada@example.com"}})", "\"email\"");
    expect_refused(R"({"email": true})", "\"email\"");
}

TEST(PreparePayload, MalformedEmails) {
    for (const char *e : {"ada.example.com", "ada@@example.com", "ada@b@example.com", "ada@example", "ada @example.com",
                          "ada@exa mple.com", " ada@example.com", "@example.com", "", "ada@", "ada@.com"}) {
        expect_refused(json{{"email", e}}.dump(), "\"email\"");
        expect_refused(json{{"customer", {{"customer_id", "1"}, {"email", e}}}}.dump(), "\"customer.email\"");
    }
}

TEST(PreparePayload, MalformedEmailHintIsAboutTheForm) {
    try {
        prepare_payload(R"({"email": "nope"})");
        FAIL() << "accepted";
    } catch (const InvalidPayload &e) {
        EXPECT_NE(std::string(e.what()).find("well-formed"), std::string::npos) << e.what();
        EXPECT_NE(e.hint().find("name@example.com"), std::string::npos) << e.hint();
    }
}

TEST(PreparePayload, CustomerNotAnObject) {
    expect_refused(R"({"customer": "42"})", "\"customer\"");
    expect_refused(R"({"customer": 42})", "\"customer\"");
    expect_refused(R"({"customer": [{"customer_id": "42"}]})", "\"customer\"");
    expect_refused(R"({"customer": true})", "\"customer\"");
    expect_refused(R"({"email": "ada@example.com", "customer": "42"})", "\"customer\"");
}

TEST(PreparePayload, CustomerWithoutIdOrEmail) {
    expect_refused(R"({"customer": {}})", "\"customer\"");
    expect_refused(R"({"customer": {"first_name": "Ada"}})", "\"customer\"");
    expect_refused(R"({"customer": {"customer_id": null, "email": null}})", "\"customer\"");
    // A top-level email does not rescue a customer object that identifies nobody.
    expect_refused(R"({"email": "ada@example.com", "customer": {"first_name": "Ada"}})", "\"customer\"");
}

TEST(PreparePayload, CustomerIdBadValues) {
    expect_refused(R"({"customer": {"customer_id": ""}})", "customer.customer_id");
    expect_refused(R"({"customer": {"customer_id": 4.5}})", "customer.customer_id");
    expect_refused(R"({"customer": {"customer_id": true}})", "customer.customer_id");
    expect_refused(R"({"customer": {"customer_id": ["42"]}})", "customer.customer_id");
    expect_refused(R"({"customer": {"customer_id": {"id": "42"}}})", "customer.customer_id");
}

TEST(PreparePayload, OptionalCustomerFieldsMustBeStrings) {
    for (const char *field : {"first_name", "last_name", "phone_no"}) {
        for (const char *value : {"42", "true", "1.5", "[\"x\"]", "{\"a\": 1}"}) {
            const std::string text =
                std::string(R"({"customer": {"customer_id": "1", ")") + field + "\": " + value + "}}";
            expect_refused(text, std::string("customer.") + field);
        }
        expect_accepted_unchanged(std::string(R"({"customer": {"customer_id": "1", ")") + field + "\": \"x\"}}");
    }
}

TEST(PreparePayload, NullOptionalCustomerFieldsCountAsAbsent) {
    for (const char *field : {"first_name", "last_name", "phone_no"})
        EXPECT_NO_THROW(prepare_payload(std::string(R"({"customer": {"customer_id": "1", ")") + field + "\": null}}"));
}

TEST(PreparePayload, Devices_Refused) {
    const std::string pre = R"({"customer": {"customer_id": "1", "devices": )";
    expect_refused(pre + R"({"device_type": "ios", "device_token": "a"}}})", "customer.devices");
    expect_refused(pre + R"("abc"}})", "customer.devices");
    expect_refused(pre + R"(["abc"]}})", "customer.devices");
    expect_refused(pre + R"([[]]}})", "customer.devices");
    expect_refused(pre + R"([{"device_type": "ios"}]}})", "device_token");
    expect_refused(pre + R"([{"device_type": "ios", "device_token": 5}]}})", "device_token");
    expect_refused(pre + R"([{"device_type": "ios", "device_token": null}]}})", "device_token");
    expect_refused(pre + R"([{"device_token": "a"}]}})", "device_type");
    expect_refused(pre + R"([{"device_type": "ios", "device_token": "a"}, {"device_type": "ios"}]}})", "device_token");
}

TEST(PreparePayload, InvalidJsonText) {
    for (const char *t : {"", "{", "}", "not json", "{'email': 'a@b.co'}", R"({"email": "ada@example.com",})",
                          R"({"email": "ada@example.com"} x)", R"({"email" "ada@example.com"})", "NaN"}) {
        SCOPED_TRACE(std::string("text: ") + t);
        EXPECT_THROW(prepare_payload(t), InvalidJson);
    }
}

TEST(PreparePayload, InvalidJsonIsNotInvalidPayload) {
    try {
        prepare_payload("{");
        FAIL() << "accepted";
    } catch (const InvalidPayload &) {
        FAIL() << "InvalidPayload for text that is not JSON";
    } catch (const InvalidJson &e) {
        EXPECT_FALSE(std::string(e.what()).empty());
    }
}

TEST(PreparePayload, HintsAreNonEmpty) {
    for (const char *t :
         {"[]", "{}", R"({"email": 1})", R"({"email": "x"})", R"({"customer": 1})", R"({"customer": {}})",
          R"({"customer": {"customer_id": ""}})", R"({"customer": {"customer_id": 1.5}})",
          R"({"customer": {"customer_id": "1", "phone_no": 1}})", R"({"customer": {"customer_id": "1", "devices": 1}})",
          R"({"customer": {"customer_id": "1", "devices": [1]}})",
          R"({"customer": {"customer_id": "1", "devices": [{}]}})"}) {
        SCOPED_TRACE(t);
        try {
            prepare_payload(t);
            ADD_FAILURE() << "accepted";
        } catch (const InvalidPayload &e) {
            EXPECT_FALSE(e.hint().empty()) << e.what();
            EXPECT_FALSE(std::string(e.what()).empty());
        }
    }
}

// ---------------------------------------------------------------- is_valid_email

TEST(IsValidEmail, Positives) {
    const std::string local64(64, 'a');
    const std::string long_domain = std::string(185, 'b') + ".com";  // 64 + 1 + 189 = 254
    for (const std::string &e :
         {std::string("ada@example.com"), std::string("a.b+tag@sub.example.co.uk"), std::string("x@y.io"),
          std::string("a@b.c"), std::string("o'brien@example.ie"), std::string("UPPER@EXAMPLE.COM"),
          std::string("user_name-1@xn--bcher-kva.example"), std::string("first.last@example-domain.org"),
          std::string("1234@123.45"), local64 + "@example.com", local64 + "@" + long_domain,
          std::string("j\xc3\xb6rg@example.de")}) {
        EXPECT_TRUE(is_valid_email(e)) << e;
    }
}

TEST(IsValidEmail, Negatives) {
    const std::string local65(65, 'a');
    const std::string long_domain = std::string(186, 'b') + ".com";  // 64 + 1 + 190 = 255
    for (const std::string &e : {std::string(""),
                                 std::string("a"),
                                 std::string("a@"),
                                 std::string("@b"),
                                 std::string("ada.example.com"),
                                 std::string("ada@@example.com"),
                                 std::string("a@b@example.com"),
                                 std::string("ada@example"),
                                 std::string("ada@.com"),
                                 std::string("ada@example."),
                                 std::string("ada @example.com"),
                                 std::string(" ada@example.com"),
                                 std::string("ada@example.com "),
                                 std::string("ada@exa mple.com"),
                                 std::string("@example.com"),
                                 std::string("ada@-example.com"),
                                 std::string("ada@example..com"),
                                 std::string("<ada@example.com>"),
                                 std::string("ada@exa\tmple.com"),
                                 std::string("ada@example.com\n"),
                                 std::string("a(b)@example.com"),
                                 std::string("a,b@example.com"),
                                 std::string("a;b@example.com"),
                                 std::string("a\"b@example.com"),
                                 std::string("a\\b@example.com"),
                                 std::string("ada\x7f@example.com"),
                                 std::string("ada\0@example.com", 16),
                                 local65 + "@example.com",
                                 std::string(64, 'a') + "@" + long_domain}) {
        EXPECT_FALSE(is_valid_email(e)) << "\"" << e << "\"";
    }
}

// check_fields must refuse exactly what prepare_payload refuses, with the same message.
TEST(CheckFields, AgreesWithPreparePayload) {
    struct Case {
        const char *json;
        bunce::PayloadFields fields;
    };
    auto f = [](const char *email, bool customer, const char *id, const char *cemail) {
        bunce::PayloadFields x;
        x.email = email;
        x.has_customer = customer;
        x.customer_id = id;
        x.customer_email = cemail;
        return x;
    };
    const Case cases[] = {
        {R"({"email": "ada@example.com"})", f("ada@example.com", false, nullptr, nullptr)},
        {R"({"email": "nope"})", f("nope", false, nullptr, nullptr)},
        {R"({"amount": 1})", f(nullptr, false, nullptr, nullptr)},
        {R"({"customer": {}})", f(nullptr, true, nullptr, nullptr)},
        {R"({"customer": {"customer_id": ""}})", f(nullptr, true, "", nullptr)},
        {R"({"customer": {"customer_id": "42"}})", f(nullptr, true, "42", nullptr)},
        {R"({"customer": {"email": "x@y"}})", f(nullptr, true, nullptr, "x@y")},
        {R"({"customer": {"email": "x@y.io"}})", f(nullptr, true, nullptr, "x@y.io")},
        {R"({"email": "bad", "customer": {"customer_id": "1"}})", f("bad", true, "1", nullptr)},
    };
    for (const auto &c : cases) {
        std::string expected, actual;
        try {
            prepare_payload(c.json);
        } catch (const InvalidPayload &e) {
            expected = e.what();
        }
        try {
            bunce::check_fields(c.fields);
        } catch (const InvalidPayload &e) {
            actual = e.what();
        }
        EXPECT_EQ(expected, actual) << c.json;
    }
}

// Hostile nesting is refused by a count, before any parser or walk recurses over it.
TEST(PreparePayload, DeepNestingIsALimitNotACrash) {
    auto nested = [](size_t levels) {
        return R"({"email":"ada@example.com","x":)" + std::string(levels, '[') + "1" + std::string(levels, ']') + "}";
    };
    EXPECT_NO_THROW(prepare_payload(nested(bunce::kMaxPayloadDepth - 1)));
    EXPECT_THROW(prepare_payload(nested(bunce::kMaxPayloadDepth)), bunce::LimitExceeded);
    EXPECT_THROW(prepare_payload(nested(200000)), bunce::LimitExceeded);
    // brackets inside strings are text, not nesting
    EXPECT_NO_THROW(prepare_payload(R"({"email":"ada@example.com","x":")" + std::string(1000, '[') + "\"}"));
}

// Bunce refuses addresses with Unicode white space or invisible characters; so does bunce.
TEST(IsValidEmail, UnicodeSpacesAndBrokenUtf8AreRefused) {
    for (const char *e :
         {"ada\u00a0@example.com", "ada@exa\u2028mple.com", "ada\u3000@example.com", "ada@example.com\u200b",
          "\ufeffada@example.com", "ada\u2009x@example.com", "ada\u0085@example.com", "ada\xc3@example.com",
          "ada\xed\xa0\x80@example.com", "ada\xc0\xaf@example.com"})
        EXPECT_FALSE(is_valid_email(e)) << e;
    for (const char *e : {"jos\u00e9@example.com", "ada@b\u00fccher.example", "\u7528\u6237@example.com"})
        EXPECT_TRUE(is_valid_email(e)) << e;
}

// Refusals name the field, and never quote a value.
TEST(PreparePayload, RefusalsNameTheField) {
    auto message = [](const std::string &json) {
        try {
            prepare_payload(json);
        } catch (const std::exception &e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    EXPECT_EQ(message(R"({"email": "ada@example.com", "deep": {"n": 1e400}})"),
              "payload field \"deep\" holds a number too large for Bunce");
    EXPECT_EQ(message(R"({"email": "ada@example.com", "note": "a\u0000b"})"),
              "payload field \"note\" holds a NUL character (\\u0000), which PostgreSQL cannot store");
    EXPECT_EQ(message(R"({"customer": {"customer_id": 1.5}})"),
              "payload field \"customer.customer_id\" must be a string or an integer");
    EXPECT_EQ(message(R"({"customer": {"customer_id": 123456789012345678901234567890}})"), "accepted");
    EXPECT_EQ(prepare_payload(R"({"customer": {"customer_id": 123456789012345678901234567890}})").json,
              R"({"customer": {"customer_id": "123456789012345678901234567890"}})");
}

// jsonb writes numbers out in full: a short token may not stand for a long text.
TEST(PreparePayload, NumbersThatWouldGrowAreRefused) {
    EXPECT_NO_THROW(prepare_payload(R"({"email": "ada@example.com", "n": 1e60, "m": 1.5e-10, "k": 123.456})"));
    EXPECT_THROW(prepare_payload(R"({"email": "ada@example.com", "n": 0e-16383})"), InvalidJson);
    EXPECT_THROW(prepare_payload(R"({"email": "ada@example.com", "n": [1e64]})"), InvalidJson);
    EXPECT_THROW(prepare_payload(R"({"email": "ada@example.com", "n": 1e-70})"), InvalidJson);
    EXPECT_THROW(prepare_payload(R"({"email": "ada@example.com", "n": 1e999999999})"), InvalidPayload);
    EXPECT_THROW(prepare_payload("{\"email\": \"ada@example.com\", \"n\": 1" + std::string(70, '0') + "}"),
                 InvalidJson);
}

// The value of a json column, checked before jsonb stores it: what a payload may not hold is
// refused in the same terms, naming the member it is under.
TEST(CheckMemberValue, RefusesWhatAPayloadMayNotHold) {
    using bunce::check_member_value;
    EXPECT_NO_THROW(check_member_value("extra", R"({"a": [1, "x", null, {"b": 2.5}]})"));
    EXPECT_NO_THROW(check_member_value("when", R"("2024-05-01T10:00:00+02:00")"));
    EXPECT_THROW(check_member_value("customer", R"({"customer_id": 4.5})"), InvalidPayload);
    EXPECT_THROW(check_member_value("extra", R"({"a": "x\u0000y"})"), InvalidJson);
    EXPECT_THROW(check_member_value("extra", "[1e70]"), InvalidJson);
    EXPECT_THROW(check_member_value("extra", R"({"a": "\ud800"})"), InvalidJson);
    EXPECT_THROW(check_member_value("extra", std::string(40, '[') + std::string(40, ']')), bunce::LimitExceeded);
    EXPECT_THROW(check_member_value("when", R"("10000-01-01T00:00:00+00:00")"), InvalidPayload);
    try {
        check_member_value("extra", R"({"n": 1e400})");
        ADD_FAILURE() << "accepted 1e400";
    } catch (const InvalidPayload &e) {
        EXPECT_NE(std::string(e.what()).find("\"extra\""), std::string::npos) << e.what();
    }
}

// ---------------------------------------------------------------- one part at a time

// The checks of a payload held parsed give what prepare_payload gives for the same payload.
TEST(ParsedPayload, RecipientAsPrepared) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"("ada@example.com")", ""},
        {R"("not an address")", ""},
        {R"("a\"b@example.com")", ""},
        {R"("ad\u0061@example.com")", ""},
        {"42", ""},
        {"null", ""},
        {"", ""},
        {"", R"({"customer_id": "7"})"},
        {"", R"({"customer_id": ""})"},
        {"", R"({"email": 5})"},
        {R"("x")", R"({"customer_id": 7})"},
        {"", "[1]"},
    };
    for (const auto &[email, customer] : cases) {
        std::string payload = "{";
        if (!email.empty()) payload += R"("email": )" + email;
        if (!customer.empty()) payload += std::string(email.empty() ? "" : ", ") + R"("customer": )" + customer;
        payload += "}";
        SCOPED_TRACE(payload);
        std::string prepared, parsed;
        try {
            prepare_payload(payload);
        } catch (const std::exception &e) {
            prepared = e.what();
        }
        try {
            bunce::check_parsed_recipient(email, customer);
        } catch (const std::exception &e) {
            parsed = e.what();
        }
        EXPECT_EQ(parsed, prepared);
    }
}

TEST(ParsedPayload, ValuesAsPrepared) {
    EXPECT_EQ(bunce::normalise_string("at", "2024-05-01T10:00:00+02:00").value_or(""), "2024-05-01T08:00:00Z");
    EXPECT_FALSE(bunce::normalise_string("at", "hello").has_value());
    EXPECT_THROW(bunce::normalise_string("at", "9999-12-31T23:30:00-01:00"), InvalidPayload);
    EXPECT_TRUE(bunce::is_normalised("amount", true));
    EXPECT_FALSE(bunce::is_normalised("email", true));
    EXPECT_TRUE(bunce::is_normalised("email", false));
    EXPECT_FALSE(bunce::is_normalised("customer", false));
    EXPECT_TRUE(bunce::beyond_double("1" + std::string(400, '0')));
    EXPECT_FALSE(bunce::beyond_double("1" + std::string(300, '0')));
    EXPECT_THROW(bunce::check_number("n", "1" + std::string(70, '0')), InvalidJson);
    EXPECT_NO_THROW(bunce::check_number("n", "120.50"));
    EXPECT_THROW(bunce::check_integer_customer_id("4.2"), InvalidPayload);
    EXPECT_NO_THROW(bunce::check_integer_customer_id("-42"));
    EXPECT_NO_THROW(bunce::check_parsed_depth(bunce::kMaxPayloadDepth));
    EXPECT_THROW(bunce::check_parsed_depth(bunce::kMaxPayloadDepth + 1), bunce::LimitExceeded);
}
