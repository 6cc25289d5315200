"""The services. Each talks to the others only through events on the bus and rows in Postgres;
none imports another."""
