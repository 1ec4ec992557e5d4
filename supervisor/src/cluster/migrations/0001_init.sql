-- kugetsu's cluster schema, version 1: the queue, leases with fences, events, journals,
-- checkpoints, steers and the nodes. Applied once, under an advisory lock, by the first node.

CREATE SCHEMA IF NOT EXISTS kugetsu;

-- Every claim takes a new value: the fence every later write for the task must carry.
CREATE SEQUENCE kugetsu.fence;
-- Submission order (FIFO within a priority).
CREATE SEQUENCE kugetsu.submit_order;

CREATE TABLE kugetsu.nodes (
    id          text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    max_shadows integer NOT NULL,
    running     integer NOT NULL DEFAULT 0,
    version     text NOT NULL,
    stopped     boolean NOT NULL DEFAULT false
);

CREATE TABLE kugetsu.tasks (
    id            text PRIMARY KEY,
    ord           bigint NOT NULL DEFAULT nextval('kugetsu.submit_order'),
    -- 0 high, 1 normal, 2 low
    priority      smallint NOT NULL,
    -- queued | running | finished
    state         text NOT NULL,
    -- the task's record (what task.json holds)
    record        jsonb NOT NULL,
    mem_limit     bigint NOT NULL,
    node          text,
    fence         bigint,
    lease_until   timestamptz,
    -- claims so far
    claims        integer NOT NULL DEFAULT 0,
    -- the newest checkpoint: a commit pushed to checkpoint_remote under checkpoint_ref
    checkpoint    text,
    checkpoint_ref text,
    cancel        boolean NOT NULL DEFAULT false,
    status        text,
    finished      jsonb,
    -- what `ps` shows, kept by the node that runs the task (an rpc TaskSummary)
    summary       jsonb,
    submitted_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
CREATE INDEX tasks_queued ON kugetsu.tasks (priority, ord) WHERE state = 'queued';
CREATE INDEX tasks_leases ON kugetsu.tasks (lease_until) WHERE state = 'running';
CREATE INDEX tasks_node ON kugetsu.tasks (node) WHERE state = 'running';

-- A task's events, one row per envelope (`body` is the JSON line as events.jsonl holds it).
CREATE TABLE kugetsu.events (
    -- commit-ordered enough for followers of every task (see cluster::api)
    gid   bigserial,
    task  text NOT NULL REFERENCES kugetsu.tasks (id) ON DELETE CASCADE,
    seq   bigint NOT NULL,
    fence bigint,
    body  text NOT NULL,
    PRIMARY KEY (task, seq)
);
CREATE INDEX events_gid ON kugetsu.events (gid);

-- A task's checkpoint journal, one row per line as the worker wrote it (0-based line number).
CREATE TABLE kugetsu.journal (
    task  text NOT NULL REFERENCES kugetsu.tasks (id) ON DELETE CASCADE,
    line  bigint NOT NULL,
    fence bigint NOT NULL,
    body  text NOT NULL,
    PRIMARY KEY (task, line)
);

-- Steers for a task, delivered by whichever node runs it.
CREATE TABLE kugetsu.steers (
    id         bigserial PRIMARY KEY,
    task       text NOT NULL REFERENCES kugetsu.tasks (id) ON DELETE CASCADE,
    text       text NOT NULL,
    delivered  boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX steers_pending ON kugetsu.steers (task) WHERE NOT delivered;
