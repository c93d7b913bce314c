"""Start and stop a reactor per worker process under web servers (README "Running inside a web app")."""
