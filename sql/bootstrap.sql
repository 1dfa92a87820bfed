-- pgcdc's catalog: the streams cdc_auto_configure set up, and their routes.
-- Rows are dumped with the database (pg_extension_config_dump), so a
-- restored database knows its streams.

CREATE SCHEMA IF NOT EXISTS pgcdc;
COMMENT ON SCHEMA pgcdc IS 'pgcdc catalog: streams and routes registered by cdc_auto_configure';

CREATE TABLE pgcdc.streams (
    slot_name        name PRIMARY KEY,
    publication_name name NOT NULL,
    patterns         text[] NOT NULL,
    exclude          text[] NOT NULL DEFAULT '{}',
    route_by_table   boolean NOT NULL,
    -- Key-hash partitions per table (1: each table one route). Like
    -- route_by_table, fixed for the life of the stream: its rings are
    -- named after it.
    partitions       int NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 64),
    reader_role      name,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgcdc.streams IS 'one row per replication slot configured by cdc_auto_configure';

CREATE TABLE pgcdc.routes (
    slot_name   name NOT NULL REFERENCES pgcdc.streams ON DELETE CASCADE,
    -- The worker routes by relation OID; the names are for people (as of
    -- the last cdc_auto_configure: a renamed table keeps its route).
    relid       oid NOT NULL,
    schema_name name NOT NULL,
    table_name  name NOT NULL,
    route       text NOT NULL,
    -- A table split by a hash of its replica identity key has one route per
    -- partition: which one this is, and how many there are.
    partition   int NOT NULL DEFAULT 0,
    partitions  int NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 64),
    PRIMARY KEY (slot_name, relid, partition)
);
COMMENT ON TABLE pgcdc.routes IS 'the tables of each stream and the route (ring) their changes go to';

CREATE TABLE pgcdc.consumers (
    slot_name     name NOT NULL REFERENCES pgcdc.streams ON DELETE CASCADE,
    consumer_name text NOT NULL CHECK (octet_length(consumer_name) BETWEEN 1 AND 64),
    -- The one OS user that may read as the consumer (NULL: the first that
    -- does keeps it).
    os_user       name,
    registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot_name, consumer_name)
);
COMMENT ON TABLE pgcdc.consumers IS 'the named consumers of each stream: every ring keeps its changes until each of them acknowledged them';

-- Snapshots (DESIGN §6): one row per table and request. A snapshot is
-- planned into key ranges that workers read in parallel, chunk by chunk;
-- each range's progress is committed with the high watermark of its last
-- chunk, so a crash resumes after the last chunk delivered.
CREATE TABLE pgcdc.snapshots (
    snapshot_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slot_name      name NOT NULL REFERENCES pgcdc.streams ON DELETE CASCADE,
    relid          oid NOT NULL,
    schema_name    name NOT NULL,
    table_name     name NOT NULL,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'cancelled', 'failed')),
    -- The key chunks are cut by (the stream's key of the table), as
    -- column names and SQL types; set when the snapshot is planned.
    key_columns    text[],
    key_types      text[],
    rows_estimated bigint,
    error          text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz
);
COMMENT ON TABLE pgcdc.snapshots IS 'snapshots of tables asked for by cdc_auto_configure and cdc_snapshot';
-- One snapshot in progress per table and stream.
CREATE UNIQUE INDEX snapshots_in_progress ON pgcdc.snapshots (slot_name, relid)
    WHERE state IN ('pending', 'running');

CREATE TABLE pgcdc.snapshot_ranges (
    snapshot_id  bigint NOT NULL REFERENCES pgcdc.snapshots ON DELETE CASCADE,
    range_no     int NOT NULL,
    -- Keys after lower_key (NULL: from the first), up to upper_key (NULL:
    -- to the last), as the text of the key's values.
    lower_key    text[],
    upper_key    text[],
    -- The last key delivered: the next chunk starts after it.
    resume_after text[],
    chunks       bigint NOT NULL DEFAULT 0,
    rows         bigint NOT NULL DEFAULT 0,
    -- Reads of the next chunk begun since the last one committed.
    attempts     int NOT NULL DEFAULT 0,
    done         boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (snapshot_id, range_no)
);
COMMENT ON TABLE pgcdc.snapshot_ranges IS 'the key ranges of each snapshot and how far each has been read';

-- Which streams and routes exist is no secret (as pg_publication_tables
-- is not); cdc_routes() and cdc_status() show each role the routes of the
-- tables it may SELECT. Changing the catalog takes its owner.
GRANT USAGE ON SCHEMA pgcdc TO PUBLIC;
GRANT SELECT ON pgcdc.streams, pgcdc.routes, pgcdc.consumers, pgcdc.snapshots, pgcdc.snapshot_ranges TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('pgcdc.streams', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.routes', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.consumers', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.snapshots', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.snapshot_ranges', '');
