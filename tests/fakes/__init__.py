"""Local stand-ins for outside services, served on loopback for end-to-end tests."""
