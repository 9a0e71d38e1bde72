// bunce::api_url_problem on arbitrary text. Its promise: plain http only to a loopback
// address, so the key never crosses a network in clear text. The oracle is libcurl's own URL
// parser (what the sender really connects to): when the check accepts an http:// URL that
// libcurl can parse, libcurl's host must be loopback and the URL must carry no credentials.
#include <arpa/inet.h>
#include <strings.h>

#include <cstdint>
#include <cstring>
#include <string>

#include <curl/curl.h>

#include "delivery.hpp"
#include "fuzz_check.hpp"

namespace {

bool loopback_host(const char *host) {
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0) return true;
    // The resolver reads IPv4 the inet_aton way (127.1 is 127.0.0.1); anything else it
    // looks up as a name, which DNS or a search domain may send anywhere.
    in_addr a;
    return inet_aton(host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const std::string url(reinterpret_cast<const char *>(data), size);
    const auto problem = bunce::api_url_problem(url);
    if (problem) {
        FUZZ_CHECK(!problem->empty(), "an empty problem");
        return 0;
    }
    if (strncasecmp(url.c_str(), "https://", 8) == 0) return 0;
    FUZZ_CHECK(strncasecmp(url.c_str(), "http://", 7) == 0, "accepted a scheme other than http(s)");
    if (url.find('\0') != url.npos) return 0;  // a GUC string has no NUL

    // As the worker builds it (src/pg/sender.cpp): api_url + "/events/trigger".
    const std::string full = url + "/events/trigger";
    CURLU *h = curl_url();
    if (curl_url_set(h, CURLUPART_URL, full.c_str(), 0) == CURLUE_OK) {
        char *host = nullptr, *user = nullptr, *password = nullptr;
        curl_url_get(h, CURLUPART_HOST, &host, 0);
        curl_url_get(h, CURLUPART_USER, &user, 0);
        curl_url_get(h, CURLUPART_PASSWORD, &password, 0);
        if (!host || !loopback_host(host))
            std::fprintf(stderr, "libcurl connects to host [%s] for %s\n", host ? host : "(none)",
                         full.c_str());
        FUZZ_CHECK(host && loopback_host(host), "plain http accepted to a host that is not loopback");
        FUZZ_CHECK(!user && !password, "credentials accepted in the URL");
        curl_free(host);
        curl_free(user);
        curl_free(password);
    }
    curl_url_cleanup(h);
    return 0;
}
