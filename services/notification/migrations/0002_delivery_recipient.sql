-- The email delivery log: to whom each email went (NULL for pushes).
ALTER TABLE deliveries ADD COLUMN recipient text;
