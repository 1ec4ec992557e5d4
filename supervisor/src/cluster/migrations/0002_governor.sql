-- kugetsu's cluster schema, version 2: the governor's account state, shared by the nodes so N
-- nodes on one key stay within its limit (see supervisor/src/cluster/governor.rs).
--
-- Every array below has one slot per limit, in this order: requests, tokens, input tokens,
-- output tokens (per minute). Levels are token buckets refilled continuously in database
-- time; a level below zero is what waiting reservations owe. Nothing is ever held for a
-- node: a node that dies with reservations out leaves a level that refills within the
-- window like any other, so the account's capacity is never lost for longer than that.

-- One row per provider account: provider, base URL and key fingerprint (never the key).
CREATE TABLE kugetsu.gov_accounts (
    account    text PRIMARY KEY,
    -- the limits the response headers reported (NULL: none seen)
    learned    bigint[] NOT NULL DEFAULT '{NULL,NULL,NULL,NULL}',
    -- the limits last applied (the lower of a node's configured one and the learned one)
    lim        double precision[] NOT NULL DEFAULT '{NULL,NULL,NULL,NULL}',
    -- each bucket's level at level_at (NULL: full)
    level      double precision[] NOT NULL DEFAULT '{NULL,NULL,NULL,NULL}',
    level_at   timestamptz NOT NULL DEFAULT now(),
    -- a 429's retry-after: no node sends on the account before this
    hold_until timestamptz,
    hold_why   text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- What the cluster spent per day (UTC), for daily_budget_tokens / daily_budget_usd.
CREATE TABLE kugetsu.gov_daily (
    day      date PRIMARY KEY,
    tokens   bigint NOT NULL DEFAULT 0,
    cost_usd double precision NOT NULL DEFAULT 0
);

-- A bucket of `lim` per minute at `level` (NULL: full), `secs` later.
CREATE FUNCTION kugetsu.gov_refill(lim double precision, level double precision,
                                   secs double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE AS $$
    SELECT least(least(coalesce(level, lim), lim) + secs * lim / 60.0, lim)
$$;

-- A permit: charges `cost` on every bucket with a limit (the lower of `configured` and the
-- learned one) unless the account is held; answers how long until the charge is covered, the
-- hold, the learned limits, today's spending and how many nodes are up (for the share a node
-- keeps to when the database is unreachable). One statement, one round trip.
CREATE FUNCTION kugetsu.gov_reserve(p_account text, p_configured bigint[], p_cost bigint[],
                                    p_window_ms double precision)
RETURNS TABLE (o_wait_ms double precision, o_hold_ms double precision, o_hold_why text,
               o_learned bigint[], o_day_tokens bigint, o_day_usd double precision,
               o_nodes integer)
LANGUAGE plpgsql AS $$
DECLARE
    a      kugetsu.gov_accounts%ROWTYPE;
    lims   double precision[];
    levels double precision[];
    secs   double precision;
    l      double precision;
    lv     double precision;
    w      double precision := 0;
BEGIN
    INSERT INTO kugetsu.gov_accounts (account) VALUES (p_account) ON CONFLICT DO NOTHING;
    SELECT * INTO a FROM kugetsu.gov_accounts WHERE account = p_account FOR UPDATE;
    SELECT count(*) INTO o_nodes FROM kugetsu.nodes
     WHERE NOT stopped AND seen_at > now() - p_window_ms * interval '1 millisecond';
    SELECT d.tokens, d.cost_usd INTO o_day_tokens, o_day_usd FROM kugetsu.gov_daily d
     WHERE d.day = (now() AT TIME ZONE 'UTC')::date;
    o_day_tokens := coalesce(o_day_tokens, 0);
    o_day_usd := coalesce(o_day_usd, 0);
    o_learned := a.learned;
    o_hold_why := a.hold_why;
    IF a.hold_until > now() THEN
        o_wait_ms := 0;
        o_hold_ms := extract(epoch FROM a.hold_until - now()) * 1000;
        RETURN NEXT;
        RETURN;
    END IF;
    o_hold_ms := 0;
    lims := a.lim;
    levels := a.level;
    secs := greatest(extract(epoch FROM now() - a.level_at), 0);
    FOR i IN 1..4 LOOP
        l := least(p_configured[i], a.learned[i]);
        IF l IS NULL THEN
            lims[i] := NULL;
            levels[i] := NULL;
        ELSE
            l := greatest(l, 1);
            lv := kugetsu.gov_refill(l, levels[i], secs) - least(coalesce(p_cost[i], 0), l);
            IF lv < 0 THEN
                w := greatest(w, -lv / (l / 60.0));
            END IF;
            lims[i] := l;
            levels[i] := lv;
        END IF;
    END LOOP;
    UPDATE kugetsu.gov_accounts
       SET lim = lims, level = levels, level_at = now(), updated_at = now()
     WHERE account = p_account;
    o_wait_ms := w * 1000;
    RETURN NEXT;
END
$$;

-- Hands back `amount` per bucket: a reservation that never went out, or a request's unused
-- charge (when no remaining count from the provider rules).
CREATE FUNCTION kugetsu.gov_refund(p_account text, p_amount bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    a      kugetsu.gov_accounts%ROWTYPE;
    levels double precision[];
    secs   double precision;
BEGIN
    SELECT * INTO a FROM kugetsu.gov_accounts WHERE account = p_account FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    levels := a.level;
    secs := greatest(extract(epoch FROM now() - a.level_at), 0);
    FOR i IN 1..4 LOOP
        IF a.lim[i] IS NOT NULL THEN
            levels[i] := least(kugetsu.gov_refill(a.lim[i], levels[i], secs)
                               + coalesce(p_amount[i], 0), a.lim[i]);
        END IF;
    END LOOP;
    UPDATE kugetsu.gov_accounts SET level = levels, level_at = now(), updated_at = now()
     WHERE account = p_account;
END
$$;

-- A response head: the limits it reported are learned, a remaining count lower than the
-- bucket's level replaces it, and a 429's wait holds the account for every node.
CREATE FUNCTION kugetsu.gov_observe(p_account text, p_learned bigint[], p_remaining bigint[],
                                    p_hold_ms double precision, p_why text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    a       kugetsu.gov_accounts%ROWTYPE;
    v_learned bigint[];
    levels  double precision[];
    secs    double precision;
BEGIN
    INSERT INTO kugetsu.gov_accounts (account) VALUES (p_account) ON CONFLICT DO NOTHING;
    SELECT * INTO a FROM kugetsu.gov_accounts WHERE account = p_account FOR UPDATE;
    v_learned := a.learned;
    levels := a.level;
    secs := greatest(extract(epoch FROM now() - a.level_at), 0);
    FOR i IN 1..4 LOOP
        v_learned[i] := coalesce(p_learned[i], v_learned[i]);
        IF a.lim[i] IS NOT NULL THEN
            levels[i] := kugetsu.gov_refill(a.lim[i], levels[i], secs);
            IF p_remaining[i] IS NOT NULL THEN
                levels[i] := least(levels[i], p_remaining[i]);
            END IF;
        END IF;
    END LOOP;
    UPDATE kugetsu.gov_accounts
       SET learned = v_learned, level = levels, level_at = now(), updated_at = now(),
           hold_until = CASE
               WHEN p_hold_ms > 0 AND (hold_until IS NULL
                                       OR hold_until < now() + p_hold_ms * interval '1 millisecond')
               THEN now() + p_hold_ms * interval '1 millisecond'
               ELSE hold_until END,
           hold_why = CASE
               WHEN p_hold_ms > 0 AND (hold_until IS NULL
                                       OR hold_until < now() + p_hold_ms * interval '1 millisecond')
               THEN p_why
               ELSE hold_why END
     WHERE account = p_account;
END
$$;
