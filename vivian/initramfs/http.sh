#!/bin/sh
# Run by busybox "nc HOST PORT -e" with the connection as stdin/stdout: sends one HTTP/1.0 request
# ($HTTP_METHOD $HTTP_PATH, JSON body $HTTP_BODY) and saves the whole answer in $HTTP_OUT.
printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
	"$HTTP_METHOD" "$HTTP_PATH" "$HTTP_HOST" "${#HTTP_BODY}" "$HTTP_BODY"
cat > "$HTTP_OUT"
