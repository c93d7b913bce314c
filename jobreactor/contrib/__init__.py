"""Start and stop a reactor per worker process under web servers (README: web apps)."""
