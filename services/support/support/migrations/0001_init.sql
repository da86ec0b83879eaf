-- The support service's schema starts here; its tables come in the following files.
SELECT 1;
