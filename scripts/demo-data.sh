#!/usr/bin/env bash
# Create and fill the demo table public.orders for policies/demo.toml:
# N rows (default 1,000,000) with gaps in the ids, a NULL `status` to
# backfill, and `paid_at` set on about two thirds of them.
#
#   scripts/demo-data.sh [--database-url URL] [--rows N] [--keep]
#
# --database-url defaults to $DATABASE_URL. The table is dropped and
# recreated unless --keep is given and it already exists.
set -euo pipefail

url="${DATABASE_URL:-}"
rows=1000000
keep=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --database-url) url="$2"; shift 2 ;;
        --database-url=*) url="${1#*=}"; shift ;;
        --rows) rows="$2"; shift 2 ;;
        --rows=*) rows="${1#*=}"; shift ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "demo-data.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z "$url" ]]; then
    echo "demo-data.sh: no database: pass --database-url or set DATABASE_URL" >&2
    exit 2
fi
if ! [[ "$rows" =~ ^[0-9]+$ ]]; then
    echo "demo-data.sh: --rows must be a whole number, got '$rows'" >&2
    exit 2
fi

psql "$url" -v ON_ERROR_STOP=1 -q -v rows="$rows" -v keep="$keep" <<'SQL'
SELECT (:keep = 1 AND to_regclass('public.orders') IS NOT NULL) AS skip \gset
\if :skip
  \echo 'public.orders exists; kept (--keep)'
\else
SET client_min_messages = warning;
DROP TABLE IF EXISTS public.orders;
CREATE TABLE public.orders (
    id          bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    amount      numeric(10, 2) NOT NULL,
    created_at  timestamptz NOT NULL,
    paid_at     timestamptz,
    status      text
);
-- ids with gaps: about one id in eight is missing, plus a few big jumps.
INSERT INTO public.orders (id, customer_id, amount, created_at, paid_at, status)
SELECT g.id,
       1 + (g.n * 7919) % 50000,
       ((g.n * 31) % 100000) / 100.0,
       now() - make_interval(secs => (:rows - g.n) * 3),
       CASE WHEN g.n % 3 <> 0 THEN now() - make_interval(secs => (:rows - g.n) * 3 - 60) END,
       NULL
  FROM (SELECT n, n + n / 7 + (n / 100000) * 1000000 AS id
          FROM generate_series(1::bigint, :rows) AS n) g;
CREATE INDEX orders_customer ON public.orders (customer_id);
ANALYZE public.orders;
SELECT count(*) AS rows, min(id), max(id), count(*) FILTER (WHERE status IS NULL) AS pending
  FROM public.orders \gset
\echo 'public.orders:' :rows 'rows, ids' :min '..' :max ',' :pending 'pending'
\endif
SQL
