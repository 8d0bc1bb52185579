-- Resume tokens rotate on every reconnect. A seat accepts its newest token and
-- the one its member last presented (the newest may not have reached it before
-- the connection dropped again); players.token_hash holds the newest.
ALTER TABLE players ADD COLUMN previous_token_hash text;
COMMENT ON COLUMN players.previous_token_hash IS
    'SHA-256 of the token the member last presented to resume; NULL before any rotation';
