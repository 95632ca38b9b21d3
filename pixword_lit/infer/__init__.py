"""A trained run at work: loading it, generating text, sampling images, caption eval."""
