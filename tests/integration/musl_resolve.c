/* Resolve one name the way a musl-linked (Alpine) pod does: getaddrinfo, IPv4 only.
 * Prints each address once, one per line; on failure prints gai_strerror and exits 2.
 * Built with `musl-gcc -static` by tests/integration/test_musl.py. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv)
{
	struct addrinfo hints, *res, *ai;
	char text[INET_ADDRSTRLEN];
	int rc;

	if (argc != 2) {
		fprintf(stderr, "usage: %s NAME\n", argv[0]);
		return 64;
	}
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_INET;
	hints.ai_socktype = SOCK_STREAM;
	rc = getaddrinfo(argv[1], NULL, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "getaddrinfo %s: %s\n", argv[1], gai_strerror(rc));
		return 2;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ai->ai_addr;
		if (!inet_ntop(AF_INET, &sin->sin_addr, text, sizeof text)) {
			perror("inet_ntop");
			freeaddrinfo(res);
			return 1;
		}
		printf("%s\n", text);
	}
	freeaddrinfo(res);
	return 0;
}
