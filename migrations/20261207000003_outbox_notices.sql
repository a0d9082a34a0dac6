-- Notices (issue 25) go through the outbox too, in the transaction of the
-- session they are about: each row now says which of the worker's exchanges
-- it goes to (the relay maps 'revocations' and 'notices' to
-- amqp.revocations_exchange and amqp.notices_exchange) and its AMQP `type`.
-- The defaults keep the rows written before this (and by an older worker
-- during a rolling upgrade) revokes. Constant defaults: no table rewrite.
ALTER TABLE outbox
    ADD COLUMN exchange text NOT NULL DEFAULT 'revocations'
        CHECK (exchange IN ('revocations', 'notices')),
    ADD COLUMN message_type text NOT NULL DEFAULT 'revoke';
