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
    reader_role      name,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgcdc.streams IS 'one row per replication slot configured by cdc_auto_configure';

CREATE TABLE pgcdc.routes (
    slot_name   name NOT NULL REFERENCES pgcdc.streams ON DELETE CASCADE,
    schema_name name NOT NULL,
    table_name  name NOT NULL,
    route       text NOT NULL,
    -- A table split by a hash of its replica identity key has one route per
    -- partition: which one this is, and how many there are.
    partition   int NOT NULL DEFAULT 0,
    partitions  int NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 64),
    PRIMARY KEY (slot_name, schema_name, table_name, partition)
);
COMMENT ON TABLE pgcdc.routes IS 'the tables of each stream and the route (ring) their changes go to';

SELECT pg_catalog.pg_extension_config_dump('pgcdc.streams', '');
SELECT pg_catalog.pg_extension_config_dump('pgcdc.routes', '');
