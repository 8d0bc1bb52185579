-- nexus-actors schema, version 1.
--
-- The journal (room_events) and the snapshots (game_states) are the truth a room
-- is restored from; rooms, hosts and players are kept in step with them, in the
-- same transactions, for queries, statistics and operations.

CREATE TABLE rooms (
    code            text PRIMARY KEY CHECK (length(code) = 4),
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'hibernating', 'abandoned')),
    primary_host_id text,
    epochs          jsonb NOT NULL DEFAULT '[[1, 1]]',
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_activity   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hosts (
    room_code   text NOT NULL REFERENCES rooms (code) ON DELETE CASCADE,
    user_id     text NOT NULL,
    permissions jsonb NOT NULL DEFAULT '{}',
    is_primary  boolean NOT NULL DEFAULT false,
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_code, user_id)
);

CREATE TABLE players (
    id          text NOT NULL,
    room_code   text NOT NULL REFERENCES rooms (code) ON DELETE CASCADE,
    name        text NOT NULL,
    token_hash  text NOT NULL,  -- SHA-256 of the resume token; the token is never stored
    connected   boolean NOT NULL DEFAULT false,
    joined_at   timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_code, id)
);

CREATE TABLE game_states (
    room_code       text PRIMARY KEY REFERENCES rooms (code) ON DELETE CASCADE,
    state_data      jsonb NOT NULL,
    server_sequence bigint NOT NULL,
    version         integer NOT NULL DEFAULT 1,  -- snapshots written so far
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE room_events (
    room_code       text NOT NULL REFERENCES rooms (code) ON DELETE CASCADE,
    server_sequence bigint NOT NULL,
    event_id        text NOT NULL,
    actor_id        text,
    name            text NOT NULL,
    payload         jsonb NOT NULL,
    secret          jsonb,  -- stored with the event, never sent (a new seat's token hash)
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_code, server_sequence),
    UNIQUE (room_code, event_id)
);

CREATE TABLE connection_events (
    id          bigserial PRIMARY KEY,
    room_code   text REFERENCES rooms (code) ON DELETE CASCADE,
    user_id     text,
    event_type  text NOT NULL,
    timestamp   timestamptz NOT NULL DEFAULT now(),
    metadata    jsonb
);

CREATE INDEX idx_rooms_status ON rooms (status);
CREATE INDEX idx_rooms_last_activity ON rooms (last_activity);
CREATE INDEX idx_rooms_created_at ON rooms (created_at);
CREATE INDEX idx_players_room ON players (room_code);
CREATE INDEX idx_players_connected ON players (connected);
CREATE INDEX idx_connection_events_room ON connection_events (room_code);
CREATE INDEX idx_connection_events_timestamp ON connection_events (timestamp);
CREATE INDEX idx_game_states_updated_at ON game_states (updated_at);

-- Activity: any journaled event or snapshot marks its room active now. One
-- statement-level trigger per batch, not one update per row.
CREATE FUNCTION update_room_activity() RETURNS trigger AS $$
BEGIN
    UPDATE rooms SET last_activity = now()
    WHERE code IN (SELECT DISTINCT room_code FROM new_rows);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER update_room_activity_on_events
    AFTER INSERT ON room_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION update_room_activity();

CREATE TRIGGER update_room_activity_on_game_state
    AFTER INSERT ON game_states
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION update_room_activity();

-- Rooms abandoned longer than hours_old (by last activity) go, with everything
-- that references them.
CREATE FUNCTION cleanup_old_rooms(hours_old numeric DEFAULT 24) RETURNS integer AS $$
DECLARE
    deleted_count integer;
BEGIN
    DELETE FROM rooms
    WHERE status = 'abandoned'
      AND last_activity < now() - make_interval(secs => hours_old * 3600);
    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$ LANGUAGE plpgsql;

-- Disconnected players not seen for hours_old, in rooms no server holds (a live
-- room expires its own seats, through its journal).
CREATE FUNCTION cleanup_disconnected_players(hours_old numeric DEFAULT 24)
RETURNS integer AS $$
DECLARE
    deleted_count integer;
BEGIN
    DELETE FROM players p
    USING rooms r
    WHERE p.room_code = r.code
      AND r.status = 'abandoned'
      AND NOT p.connected
      AND p.last_seen < now() - make_interval(secs => hours_old * 3600);
    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$ LANGUAGE plpgsql;

CREATE VIEW room_stats AS
SELECT
    r.status,
    count(*) AS room_count,
    avg(extract(epoch FROM (now() - r.created_at))) AS avg_age_seconds,
    coalesce(sum((SELECT count(*) FROM players p
                  WHERE p.room_code = r.code AND p.connected)), 0) AS total_players
FROM rooms r
GROUP BY r.status;
