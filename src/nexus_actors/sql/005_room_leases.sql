-- Scale-out: several server processes share this database, and every live room
-- has exactly one owner process at a time, recorded here as a lease. The owner
-- renews its leases every few seconds; once a lease has expired any process may
-- claim it. Every claim takes a new fence from one sequence, so fences only
-- grow, and every write batch checks, in its own transaction, that each room's
-- fence is still the one it holds: a process that lost a lease (paused past its
-- expiry, cut off) can never write for that room again.

CREATE SEQUENCE room_lease_fence;

CREATE TABLE room_leases (
    room_code  text PRIMARY KEY,
    owner      text NOT NULL,         -- NEXUS_NODE_ID of the process holding it
    owner_url  text,                  -- NEXUS_ADVERTISE_URL: where other processes relay to
    fence      bigint NOT NULL,       -- from room_lease_fence: grows with every claim
    expires_at timestamptz NOT NULL   -- the database's clock decides, never a process's
);

CREATE INDEX idx_room_leases_owner ON room_leases (owner);

-- Values every process shares. relay_secret authenticates the connections one
-- process opens to another to relay a client to a room's owner.
CREATE TABLE cluster_settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO cluster_settings (name, value)
VALUES ('relay_secret', replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
