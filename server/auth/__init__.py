"""API tokens: their vocabulary (tokens), their database (store) and the in-memory check
(guard). Nothing here imports HTTP code: a door extracts the presented token and the client
address and asks the Guard."""
