CREATE TABLE tracking_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    shipment_id INTEGER NOT NULL REFERENCES shipments (id),
    status      TEXT NOT NULL,
    location    TEXT,
    created_at  TEXT NOT NULL
);

CREATE INDEX tracking_events_shipment ON tracking_events (shipment_id, id);
