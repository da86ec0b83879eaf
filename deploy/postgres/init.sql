-- One database per service (compose runs this once, on an empty data volume).
CREATE DATABASE orders;
CREATE DATABASE support;
CREATE DATABASE billing;
CREATE DATABASE ledger;
