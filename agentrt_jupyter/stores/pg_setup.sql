-- agentrt-jupyter's store on PostgreSQL, schema 1: the tables, the roles' grants and the
-- row-level security that keeps users apart. Applied by `agentrt_jupyter.stores.postgres.
-- setup(url)` (or `python -m agentrt_jupyter.stores.postgres setup URL`) as a role that may
-- create schemas and roles; it is idempotent. Each user then connects as a login role in
-- `agentrt_users` (see `create_user_role`); `owner = current_user` is what they see.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentrt_users') THEN
    CREATE ROLE agentrt_users NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agentrt_admin') THEN
    CREATE ROLE agentrt_admin NOLOGIN;
  END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS agentrt;
GRANT USAGE ON SCHEMA agentrt TO agentrt_users, agentrt_admin;

CREATE TABLE IF NOT EXISTS agentrt.meta (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE IF NOT EXISTS agentrt.conversations (
  seq bigserial PRIMARY KEY,
  id text NOT NULL UNIQUE,
  owner text NOT NULL DEFAULT current_user,
  namespace text NOT NULL,
  name text NOT NULL,
  created double precision NOT NULL);
CREATE INDEX IF NOT EXISTS conversations_by_name ON agentrt.conversations (owner, namespace, name);

CREATE TABLE IF NOT EXISTS agentrt.records (
  seq bigserial PRIMARY KEY,
  conversation text NOT NULL REFERENCES agentrt.conversations (id) ON DELETE CASCADE,
  owner text NOT NULL DEFAULT current_user,
  kind text NOT NULL CHECK (kind IN ('settings', 'message', 'ledger', 'cleared')),
  role text,
  turn integer,
  written double precision NOT NULL,
  data text NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_conversation ON agentrt.records (conversation, kind, seq);
CREATE INDEX IF NOT EXISTS records_ledger_by_owner ON agentrt.records (owner, written)
  WHERE kind = 'ledger';

CREATE TABLE IF NOT EXISTS agentrt.drafts (
  conversation text PRIMARY KEY REFERENCES agentrt.conversations (id) ON DELETE CASCADE,
  owner text NOT NULL DEFAULT current_user,
  written double precision NOT NULL,
  data text NOT NULL);

CREATE TABLE IF NOT EXISTS agentrt.leases (
  conversation text PRIMARY KEY REFERENCES agentrt.conversations (id) ON DELETE CASCADE,
  owner text NOT NULL DEFAULT current_user,
  token text NOT NULL,
  holder text NOT NULL,
  pid integer NOT NULL,
  host text NOT NULL,
  heartbeat double precision NOT NULL);
CREATE INDEX IF NOT EXISTS leases_by_token ON agentrt.leases (token);

-- The reply cache: `scope` is the owner's name, or 'team' for replies a team shares
-- (those never name a conversation).
CREATE TABLE IF NOT EXISTS agentrt.replies (
  scope text NOT NULL,
  key text NOT NULL,
  bytes integer NOT NULL,
  used double precision NOT NULL,
  hits integer NOT NULL DEFAULT 0,
  conversation text,
  data text NOT NULL,
  PRIMARY KEY (scope, key),
  CHECK (scope <> 'team' OR conversation IS NULL));
CREATE INDEX IF NOT EXISTS replies_by_use ON agentrt.replies (scope, used);

CREATE TABLE IF NOT EXISTS agentrt.map_rows (
  owner text NOT NULL DEFAULT current_user,
  run text NOT NULL,
  row text NOT NULL,
  written double precision NOT NULL,
  data text NOT NULL,
  PRIMARY KEY (owner, run, row));

CREATE TABLE IF NOT EXISTS agentrt.map_jobs (
  owner text NOT NULL DEFAULT current_user,
  run text NOT NULL,
  job text NOT NULL,
  created double precision NOT NULL,
  state text NOT NULL,
  PRIMARY KEY (owner, job));

-- US dollars per million tokens, from agentrt_jupyter.batch.prices (setup() fills it).
CREATE TABLE IF NOT EXISTS agentrt.prices (
  model text PRIMARY KEY,
  input double precision NOT NULL,
  output double precision NOT NULL);

GRANT SELECT ON agentrt.meta, agentrt.prices TO agentrt_users, agentrt_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON agentrt.conversations, agentrt.records, agentrt.drafts,
  agentrt.leases, agentrt.replies, agentrt.map_rows, agentrt.map_jobs TO agentrt_users;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA agentrt TO agentrt_users;
GRANT SELECT ON agentrt.conversations, agentrt.records TO agentrt_admin;

DO $$
DECLARE
  owned text;
BEGIN
  FOREACH owned IN ARRAY ARRAY['conversations', 'records', 'drafts', 'leases', 'map_rows',
                               'map_jobs']
  LOOP
    EXECUTE format('ALTER TABLE agentrt.%I ENABLE ROW LEVEL SECURITY', owned);
    EXECUTE format('ALTER TABLE agentrt.%I FORCE ROW LEVEL SECURITY', owned);
    EXECUTE format('DROP POLICY IF EXISTS own_rows ON agentrt.%I', owned);
    EXECUTE format('CREATE POLICY own_rows ON agentrt.%I FOR ALL TO agentrt_users '
                   'USING (owner = current_user) WITH CHECK (owner = current_user)', owned);
  END LOOP;
END
$$;

DROP POLICY IF EXISTS admin_reads ON agentrt.records;
CREATE POLICY admin_reads ON agentrt.records FOR SELECT TO agentrt_admin USING (true);
DROP POLICY IF EXISTS admin_reads ON agentrt.conversations;
CREATE POLICY admin_reads ON agentrt.conversations FOR SELECT TO agentrt_admin USING (true);

ALTER TABLE agentrt.replies ENABLE ROW LEVEL SECURITY;
ALTER TABLE agentrt.replies FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_or_team ON agentrt.replies;
CREATE POLICY own_or_team ON agentrt.replies FOR SELECT TO agentrt_users
  USING (scope IN (current_user, 'team'));
DROP POLICY IF EXISTS own_or_team_insert ON agentrt.replies;
CREATE POLICY own_or_team_insert ON agentrt.replies FOR INSERT TO agentrt_users
  WITH CHECK (scope = current_user OR (scope = 'team' AND conversation IS NULL));
DROP POLICY IF EXISTS own_or_team_update ON agentrt.replies;
CREATE POLICY own_or_team_update ON agentrt.replies FOR UPDATE TO agentrt_users
  USING (scope IN (current_user, 'team'))
  WITH CHECK (scope = current_user OR (scope = 'team' AND conversation IS NULL));
DROP POLICY IF EXISTS own_delete ON agentrt.replies;
CREATE POLICY own_delete ON agentrt.replies FOR DELETE TO agentrt_users
  USING (scope = current_user);

-- Usage per user, day, model and provider, from the ledger (one row per API call); the
-- cost is an estimate from agentrt.prices (the longest model name that matches).
CREATE OR REPLACE VIEW agentrt.agentrt_usage_daily WITH (security_invoker = true) AS
SELECT r.owner AS "user",
       (to_timestamp(r.written) AT TIME ZONE 'UTC')::date AS day,
       r.data::jsonb ->> 'model' AS model,
       coalesce(r.data::jsonb ->> 'provider', 'gemini') AS provider,
       count(*) AS calls,
       sum((r.data::jsonb -> 'usage' ->> 'prompt_tokens')::bigint) AS tokens_in,
       sum((r.data::jsonb -> 'usage' ->> 'candidates_tokens')::bigint
           + (r.data::jsonb -> 'usage' ->> 'thoughts_tokens')::bigint) AS tokens_out,
       sum(coalesce((
         SELECT ((r.data::jsonb -> 'usage' ->> 'prompt_tokens')::bigint * p.input
                 + ((r.data::jsonb -> 'usage' ->> 'candidates_tokens')::bigint
                    + (r.data::jsonb -> 'usage' ->> 'thoughts_tokens')::bigint) * p.output) / 1e6
         FROM agentrt.prices p
         WHERE regexp_replace(r.data::jsonb ->> 'model', '^models/', '') = p.model
            OR regexp_replace(r.data::jsonb ->> 'model', '^models/', '') LIKE p.model || '-%'
         ORDER BY length(p.model) DESC LIMIT 1), 0)) AS usd
FROM agentrt.records r
WHERE r.kind = 'ledger'
GROUP BY 1, 2, 3, 4;
GRANT SELECT ON agentrt.agentrt_usage_daily TO agentrt_admin;

INSERT INTO agentrt.meta (key, value) VALUES ('schema_version', '1')
  ON CONFLICT (key) DO NOTHING;
