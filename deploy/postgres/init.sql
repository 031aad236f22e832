CREATE DATABASE outcomes OWNER spine;
