"""The path a message takes: submission, the queue, delivery (SMTP, local), bounces."""
