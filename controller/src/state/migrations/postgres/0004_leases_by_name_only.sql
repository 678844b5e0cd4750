-- Leases are found by (kind, name) only. An index by holder misled the
-- planner whenever its statistics were older than the last rebalance (taken
-- when every holder was NULL, say): a replica holding 11,000 tenants was
-- estimated to hold one, and lookups went through that index. Without it, a
-- lookup by name is one probe of the primary key, and what one replica holds
-- is a scan of a table of a few tens of thousands of rows.
DROP INDEX IF EXISTS leases_by_holder;
