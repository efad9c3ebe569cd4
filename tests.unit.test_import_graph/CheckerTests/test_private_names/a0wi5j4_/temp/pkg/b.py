_secret = 1
