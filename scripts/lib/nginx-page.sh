# Sourced by scripts/bench-load.sh and scripts/serve-instructions.sh: the
# nginx that serves the stub's page, as the upstream of the forwarding runs
# and as the plain peer of bench-load's (a) and (b). One definition, so the
# upstream both scripts measure against is the same server.
#
#   nginx_page_conf DIR PORT WORKERS
# writes DIR/nginx.conf, serving DIR/www/page.json (put it there) at
#   /flood  a 429 with a small JSON body
#   /page   the page
#   /v1/external/sessions/...  the page under the API's path (the upstream)
#   nginx_page_check PORT FILE
# fails unless both page locations answer 200 with exactly FILE;
#   page_check FILE URL [CURL-ARGUMENTS...]
# fails unless URL does (the check of any server that serves the page).
#
# Started as root, nginx's workers run as `nobody`, and mktemp's directories
# are 0700: without search permission on every directory above the page, the
# workers answer 403 and 404 (153 bytes) instead of the page, and a benchmark
# would measure those. So each script gives its own work directory o+x
# (search, not listing), DIR gets it here, nothing outside is touched, and
# the check makes any other such mistake an error, not a figure.
nginx_page_conf() {
  local dir="$1" port="$2" workers="$3"
  mkdir -p "$dir/logs" "$dir/www"
  chmod o+x "$dir" "$dir/www"
  cat > "$dir/nginx.conf" <<NGINX
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    location = /flood { default_type application/json; return 429 '{"error":{"code":"rate_limited","message":"The global limit of this API is reached."}}'; }
    location = /page { default_type application/json; alias $dir/www/page.json; }
    location ^~ /v1/external/sessions/ { default_type application/json; root $dir/www; try_files /page.json =404; }
  }
}
NGINX
}

nginx_page_check() {
  local port="$1" file="$2" location
  for location in /page /v1/external/sessions/acme/site-1; do
    page_check "$file" "http://127.0.0.1:$port$location"
  done
}

page_check() { # file url [curl arguments...]
  local file="$1" url="$2"
  shift 2
  if ! curl -sf "$@" "$url" | cmp -s - "$file"; then
    echo "$url does not serve the page: $(curl -s -o /dev/null -w '%{http_code}, %{size_download} bytes' "$@" "$url")" \
      "(an nginx started as root runs its workers as nobody: every directory above $file needs o+x)" >&2
    exit 1
  fi
}
