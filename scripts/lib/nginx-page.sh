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
nginx_page_conf() {
  local dir="$1" port="$2" workers="$3"
  mkdir -p "$dir/logs" "$dir/www"
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
