"""Call-chain monitoring in the manner of CAT: message trees in, per-minute reports out."""
